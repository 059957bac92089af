# The optional compiled call into wasm (plugsafe/_speedups.c; see plugsafe/_runtime/_cffi.py).
from collections.abc import Callable
from typing import final

# The interface version of this build (plugsafe/_runtime/_cffi.py: SPEEDUPS_API_VERSION).
API_VERSION: int

@final
class RawCall:
    """One exported function's C call, bound by ``bind``: returns the error's address (0: none)."""

    def __call__(self) -> int: ...

def bind(
    target: int, ctx: int, func: int, slots: int, width: int, trap: int, keep: object, /
) -> RawCall: ...

# The address of the get_memory callback of plugsafe's component memories (_runtime/_hostmem.py)
# and the size of the view it reads (base, size, reserved: three machine words).
HOSTMEM_GET: int
HOSTMEM_VIEW_SIZE: int

def hostmem_setup(
    new_memory: Callable[[int, int, int, int, int, int, int], int],
    grow_memory: Callable[[int, int], int],
    current: object,
    error_new: int,
    /,
) -> tuple[int, int]: ...

# WASI output captured in C (plugsafe/_runtime/_linker.py: NativeCapture): CAPTURE_WRITE is the
# address of the plugsafe_output_callback_t to give wasmtime, with a capture's key as its data.
CAPTURE_WRITE: int

def capture_open(limit: int, /) -> int: ...
def capture_value(key: int, /) -> tuple[bytes, bool]: ...
def capture_close(key: int, /) -> None: ...
def capture_count() -> int: ...
