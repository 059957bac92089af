"""plugsafe's dataclasses: made without importing ``dataclasses``, their methods compiled once.

Issue 14 (cold start). Two costs every process paid for about thirty classes at import:

- ``import dataclasses`` imports ``inspect``, and with it ``ast``, ``dis`` and ``tokenize``
  (8 % of a whole cold start). plugsafe's modules use :func:`dataclass` and :func:`field`
  from here instead (see the second half of this module): the same methods and attributes,
  ``dataclasses`` itself imported only when its ``Field`` objects are first asked for.
- ``@dataclass`` writes each class's ``__init__``, ``__repr__``, ``__eq__``, ``__hash__``,
  ``__setattr__`` and ``__delattr__`` as source text and compiles it: about a quarter of
  plugsafe's own import time, nearly all of it in ``compile``. The text is the same in every
  process (it depends only on the class definitions), so, like Python's own ``.pyc`` files, the
  compiled code objects are kept beside plugsafe's bytecode and loaded with ``marshal`` next
  time (:func:`_exec` compiles a text only the first time it sees it, with the flags ``exec``
  of a string would use, and runs the code object exactly as ``exec(text, ...)`` would). A
  class that goes to ``dataclasses`` itself while ``plugsafe/__init__.py`` runs uses the same
  cache: the ``dataclasses`` module's global name ``exec`` is shadowed by :func:`_exec` until
  the package is imported. Only texts whose globals are a plugsafe module's are cached;
  anything else is passed straight through.

The cache is trusted as much as ``__pycache__`` is (who can write there can write ``.pyc``
files Python runs), written only where Python would write bytecode (not with
``PYTHONDONTWRITEBYTECODE``/``-B``; ``sys.pycache_prefix`` honoured), tagged with the
interpreter's bytecode magic number, replaced atomically, and ignored when unreadable, corrupt
or from another interpreter: then the classes are compiled as before, and a missing text is
simply compiled. Keys are the exact source texts, so a changed class never uses stale code.
"""

from __future__ import annotations

import abc
import builtins
import collections
import contextlib
import functools
import gc
import marshal
import os
import sys
from _thread import get_ident
from types import CodeType, FunctionType
from typing import TYPE_CHECKING, Any

# What importlib.util re-exports, from where the import system itself has them (importlib.util
# imports importlib's abstract base classes and machinery too: 1 M instructions of a cold start;
# the importlib package itself, 1.4 M more, issue 14).
if TYPE_CHECKING:
    from importlib._bootstrap_external import MAGIC_NUMBER, cache_from_source
else:  # the same module, by its own name (what importlib.__init__ re-binds)
    try:
        from _frozen_importlib_external import MAGIC_NUMBER, cache_from_source
    except ImportError:  # pragma: no cover - an interpreter without it: importlib's own
        from importlib._bootstrap_external import MAGIC_NUMBER, cache_from_source

from ._lazymodule import import_now

__all__ = ["MISSING", "dataclass", "field", "field_names", "finish", "start"]

# <package>/__pycache__/_dataclass_code.<tag>.bin (the place and tag Python's own bytecode uses);
# "" where this interpreter keeps no bytecode cache (no cache tag): then nothing is cached.
try:
    _PATH = cache_from_source(os.path.join(os.path.dirname(__file__), "_dataclass_code.py"))
    _PATH = _PATH[: -len(".pyc")] + ".bin"
except NotImplementedError:  # pragma: no cover - sys.implementation.cache_tag is None
    _PATH = ""
_MAGIC = MAGIC_NUMBER

# Loaded from the cache; and the texts this import used (what is written back: the cache holds
# only what the installed version needs).
_codes: dict[str, CodeType] = {}
_used: dict[str, CodeType] = {}
_state = {"new": False, "importing": False}


def _load() -> dict[str, CodeType]:
    try:
        with open(_PATH, "rb") as f:
            blob = f.read()
        if not blob.startswith(_MAGIC):
            return {}
        codes = marshal.loads(blob[len(_MAGIC) :])
    except Exception:
        # Unreadable or corrupt, whatever marshal makes of it (a code object with a bad field
        # raises SystemError; attack6): compiled as if there were no cache, then rewritten.
        return {}
    if not isinstance(codes, dict):
        return {}
    return {k: v for k, v in codes.items() if isinstance(k, str) and isinstance(v, CodeType)}


def _exec(source: Any, globals: Any = None, locals: Any = None, /) -> None:
    """``exec`` for the dataclasses module: the same, with plugsafe's texts compiled once."""
    if globals is None:  # exec's own default: the caller's namespaces (never the case today)
        frame = sys._getframe(1)
        globals = frame.f_globals
        if locals is None:
            locals = frame.f_locals
    if type(source) is str and str(globals.get("__name__", "")).startswith("plugsafe"):
        code = _codes.get(source)
        if code is None:
            # What exec(text) does: the file name "<string>", no flags from this module's
            # ``from __future__`` imports.
            code = _codes[source] = compile(source, "<string>", "exec", dont_inherit=True)
            _state["new"] = True
        _used[source] = code
        source = code
    builtins.exec(source, globals, locals)


def _eval(source: Any, globals: Any = None, locals: Any = None, /) -> Any:
    """``eval`` for the collections module while plugsafe imports: ``namedtuple`` compiles its
    ``__new__`` from a text (``typing.NamedTuple`` classes too, 0.7 M instructions each); for
    a class of plugsafe's (namedtuple's ``module`` argument) the text is compiled once."""
    frame = sys._getframe(1)
    if globals is None:  # eval's own default: the caller's namespaces (never the case today)
        globals = frame.f_globals
        if locals is None:
            locals = frame.f_locals
    if type(source) is str and str(frame.f_locals.get("module", "")).startswith("plugsafe"):
        source = eval_code(source)
    return builtins.eval(source, globals, locals)


def eval_code(source: str) -> CodeType:
    """``compile(source, "<string>", "eval")`` of one of plugsafe's own expressions (its public
    classes' annotations, see _public), compiled once and then kept in the cache too."""
    key = "\0eval\0" + source  # no exec text starts so: the two kinds never meet
    code = _codes.get(key)
    if code is None:
        code = _codes[key] = compile(source, "<string>", "eval", dont_inherit=True)
        _state["new"] = True
    _used[key] = code
    return code


def start() -> None:
    """Load the cache and hold the cyclic garbage collector off (plugsafe's import only; until
    :func:`finish`).

    Why the collector: nearly every object plugsafe's import makes lives as long as the process
    (classes, functions, tables), and the collections its allocations trigger meanwhile
    (several full ones, each walking wasmtime's objects too) found nothing to free: 7 M of a
    340 M cold start. finish() enables it again if (and only if) it was enabled here, so the
    application's setting is kept; a thread of the application that changes it while plugsafe
    is being imported has it undone. It also moves what the import made to the oldest
    generation without scanning it (see finish).
    """
    _state["importing"] = True
    _state["gc"] = gc.isenabled()
    gc.disable()
    vars(collections)["eval"] = _eval  # (see _eval; as _hook, through the namespace for mypy)
    if not _PATH:  # pragma: no cover - no bytecode cache on this interpreter
        return
    _codes.update(_load())


def _hook(dataclasses: Any) -> None:
    """Shadow ``exec`` in the dataclasses module while plugsafe imports (the classes that go
    to ``dataclasses`` itself, below, use the cache too)."""
    if _state["importing"] and _PATH:
        # Through the module's namespace: to mypy the module has no attribute exec (it looks
        # the builtin up, which a global of that name shadows).
        vars(dataclasses)["exec"] = _exec


def finish() -> None:
    """Remove the hook, enable the collector again if it was (what the import made moved to
    its oldest generation), write the cache if a text was compiled and Python writes
    bytecode."""
    _state["importing"] = False
    if _state.pop("gc", False):
        if not gc.get_freeze_count():
            # Everything the import made lives as long as the process, and the first young
            # collection after enable() would walk all of it (with wasmtime's, imported
            # meanwhile) to find nothing: 5 M instructions of a cold start (issue 14). freeze()
            # then unfreeze() moves every tracked object to the oldest generation without a
            # scan and resets the young count: nothing stays frozen (a later full collection
            # examines them all, and frees any garbage among them, as it would have). Not when
            # the app froze objects itself: unfreeze() would thaw those too.
            gc.freeze()
            gc.unfreeze()
        gc.enable()
    if vars(collections).get("eval") is _eval:
        del vars(collections)["eval"]
    dataclasses = sys.modules.get("dataclasses")
    if dataclasses is not None and vars(dataclasses).get("exec") is _exec:
        del vars(dataclasses)["exec"]
    new, _state["new"] = _state["new"], False
    used = dict(_used)
    _codes.clear()
    _used.clear()
    if not new or sys.dont_write_bytecode:
        return
    tmp = f"{_PATH}.{os.getpid()}.tmp"
    try:
        os.makedirs(os.path.dirname(_PATH), exist_ok=True)
        # O_EXCL, as importlib writes .pyc files: never through a file or link already there
        # (in a shared PYTHONPYCACHEPREFIX another user may plant one; attack6).
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError:  # read-only install, a file in the way: compile next time, as before
        return
    try:
        with open(fd, "wb") as f:
            f.write(_MAGIC + marshal.dumps(used))
        os.replace(tmp, _PATH)
    except OSError:  # full disk: compile next time, as before
        with contextlib.suppress(OSError):
            os.unlink(tmp)


# -- plugsafe's dataclasses without the dataclasses module -------------------------------------
#
# ``import dataclasses`` imports ``inspect``, which imports ``ast``, ``dis`` and ``tokenize``:
# about 31 M of a cold start's 370 M instructions, for a decorator that runs at import.
# plugsafe's modules decorate their classes with :func:`dataclass` and :func:`field` below
# (type checkers see ``dataclasses``' own: the modules import those under ``TYPE_CHECKING``).
# For the options plugsafe uses it writes the methods ``dataclasses`` writes (the same source
# texts, compiled once through the cache above, and the same closure values) and sets the same
# attributes, so ``__init__``, ``repr``, ``==``, ``hash``, frozenness (``FrozenInstanceError``),
# ``__match_args__``, the generated ``__doc__``, pickling, ``copy`` and ``inspect.signature``
# are as they were. What needs ``dataclasses``' own ``Field`` objects (``dataclasses.fields``,
# ``replace``, ``asdict``, ``is_dataclass``) imports it on first use: ``__dataclass_fields__``
# and ``__dataclass_params__`` are descriptors that have ``dataclasses`` make the real ones
# (for a twin of the class's own fields) and put them in their place. Anything else
# (``order``, ``unsafe_hash``, ``slots``, ``ClassVar``/``InitVar``/``KW_ONLY``, annotations
# that are not strings, a base made by ``dataclasses`` itself, a class without a docstring
# and with its own ``__init__`` or ``__new__``, or an interpreter whose ``dataclasses`` this
# was not compared with: before 3.10 or from 3.14 on) goes to ``dataclasses.dataclass``.
# tests/test_dataclass_native.py compares every plugsafe dataclass with the one ``dataclasses``
# makes of the same class, on each Python CI runs (3.10, 3.11, 3.13).
#
# 3.13's ``dataclasses`` differs from 3.10-3.12's in what an app can see, and those differences
# are followed here (_PY313): ``__eq__`` compares field by field and is true for the same
# object (a NaN field), every class gets ``__replace__`` (``copy.replace``), a frozen class may
# not have a non-frozen dataclass among its bases even if another base is frozen, and the
# "non-default argument" error names the default argument too. (3.13 also compiles a class's
# methods in one text; the methods are the same, so the per-method texts here, which the cache
# keeps, are kept.)

# PLUGSAFE_STDLIB_DATACLASSES=1: every class to dataclasses itself (how the tests compare the
# two; an escape hatch should the two ever differ).
_NATIVE = (3, 10) <= sys.version_info[:2] < (3, 14)
_NATIVE = _NATIVE and not os.environ.get("PLUGSAFE_STDLIB_DATACLASSES")
_PY313 = sys.version_info >= (3, 13)


class _Missing:
    def __repr__(self) -> str:
        return "<plugsafe MISSING>"


class _HasDefaultFactory:
    def __repr__(self) -> str:  # what a signature prints for a default_factory parameter
        return "<factory>"


MISSING: Any = _Missing()
_HAS_DEFAULT_FACTORY = _HasDefaultFactory()
_OPTIONS = ("default", "default_factory", "init", "repr", "hash", "compare", "metadata", "kw_only")


class _Field:
    """What :func:`field` was given, then the field's name and type (``dataclasses.Field``'s
    attributes, as far as the methods need them)."""

    __slots__ = (*_OPTIONS, "name", "type")

    def __init__(self, **options: Any) -> None:
        self.default: Any = options["default"]
        self.default_factory: Any = options["default_factory"]
        self.init: bool = options["init"]
        self.repr: bool = options["repr"]
        self.hash: bool | None = options["hash"]
        self.compare: bool = options["compare"]
        self.metadata: Any = options["metadata"]
        self.kw_only: Any = options["kw_only"]
        self.name = ""
        self.type: Any = None

    def real(self, dataclasses: Any) -> Any:
        """The ``dataclasses.field(...)`` this stands for."""
        options = {k: getattr(self, k) for k in _OPTIONS}
        for key in ("default", "default_factory", "kw_only"):
            if options[key] is MISSING:
                options[key] = dataclasses.MISSING
        return dataclasses.field(**options)


def field(
    *,
    default: Any = MISSING,
    default_factory: Any = MISSING,
    init: bool = True,
    repr: bool = True,
    hash: bool | None = None,
    compare: bool = True,
    metadata: Any = None,
    kw_only: Any = MISSING,
) -> Any:
    """``dataclasses.field`` for plugsafe's classes (see above)."""
    if default is not MISSING and default_factory is not MISSING:
        raise ValueError("cannot specify both default and default_factory")
    return _Field(
        default=default,
        default_factory=default_factory,
        init=init,
        repr=repr,
        hash=hash,
        compare=compare,
        metadata=metadata,
        kw_only=kw_only,
    )


class _Spec:
    """One class's fields and options, from which ``dataclasses`` makes the real ones."""

    def __init__(self, fields: dict[str, _Field], own: list[_Field], options: dict[str, Any]):
        self.fields = fields  # all of them, the bases' first (as dataclasses orders them)
        self.own = own
        self.options = options


class _Lazy:
    """``__dataclass_fields__`` or ``__dataclass_params__`` of one class: the real value,
    made by ``dataclasses`` when first asked for, then in the class's namespace instead."""

    def __init__(self, spec: _Spec, name: str) -> None:
        self.spec = spec
        self.name = name

    def __get__(self, obj: object, cls: type | None = None) -> Any:
        owner = next(c for c in (cls or type(obj)).__mro__ if vars(c).get(self.name) is self)
        fields, params = _real(owner, self.spec)
        type.__setattr__(owner, "__dataclass_fields__", fields)
        type.__setattr__(owner, "__dataclass_params__", params)
        return fields if self.name == "__dataclass_fields__" else params


def _real(cls: type, spec: _Spec) -> tuple[dict[str, Any], Any]:
    """What ``dataclasses`` would have left on ``cls``: its Field objects and its parameters."""
    dataclasses = import_now("dataclasses")
    fields: dict[str, Any] = {}
    for base in cls.__mro__[-1:0:-1]:
        fields.update(getattr(base, "__dataclass_fields__", None) or {})
    # A twin of the class's own fields, made by dataclasses itself: its Fields are the real
    # ones (defaults, types and kw_only resolved as dataclasses resolves them).
    namespace: dict[str, Any] = {f.name: f.real(dataclasses) for f in spec.own}
    namespace["__annotations__"] = {f.name: f.type for f in spec.own}
    namespace["__module__"] = cls.__module__
    namespace["__qualname__"] = cls.__qualname__
    namespace["__doc__"] = cls.__doc__  # no generated docstring: no inspect.signature
    twin: Any = dataclasses.dataclass(type(cls.__name__, (), namespace), **spec.options)
    fields.update(twin.__dataclass_fields__)
    return fields, twin.__dataclass_params__


def field_names(cls: type) -> tuple[str, ...]:
    """The names ``dataclasses.fields(cls)`` gives, without importing ``dataclasses`` if ``cls``
    is one of plugsafe's (and its fields were not asked for yet)."""
    lazy = vars(cls).get("__dataclass_fields__")
    if isinstance(lazy, _Lazy):
        return tuple(lazy.spec.fields)
    return tuple(f.name for f in import_now("dataclasses").fields(cls))


def _frozen_instance_error(message: str) -> BaseException:
    # What the frozen __setattr__/__delattr__ raise: dataclasses' own exception, imported then.
    error: BaseException = import_now("dataclasses").FrozenInstanceError(message)
    return error


def dataclass(cls: Any = None, /, **options: Any) -> Any:
    """``dataclasses.dataclass`` for plugsafe's classes (see above)."""

    def wrap(cls: type) -> type:
        return _process(cls, options)

    return wrap if cls is None else wrap(cls)


_OBJECT_NEW: Any = object.__new__
_DEFAULTS = {"init": True, "repr": True, "eq": True, "frozen": False, "match_args": True}
_DEFAULTS["kw_only"] = False
_MARKERS = ("ClassVar", "InitVar", "KW_ONLY")


def _by_dataclasses(cls: type, options: dict[str, Any]) -> type:
    dataclasses = import_now("dataclasses")
    _hook(dataclasses)
    for name, value in list(vars(cls).items()):
        if isinstance(value, _Field):
            setattr(cls, name, value.real(dataclasses))
    made: type = dataclasses.dataclass(cls, **options)
    return made


def _process(cls: type, options: dict[str, Any]) -> type:
    if not _NATIVE or set(options) - set(_DEFAULTS):
        return _by_dataclasses(cls, options)
    opts = {**_DEFAULTS, **options}
    annotations = vars(cls).get("__annotations__", {})
    if any(not isinstance(t, str) or any(m in t for m in _MARKERS) for t in annotations.values()):
        return _by_dataclasses(cls, options)
    if not cls.__doc__ and (
        not opts["init"] or "__init__" in vars(cls) or cls.__new__ is not _OBJECT_NEW
    ):
        return _by_dataclasses(cls, options)  # its docstring would come from inspect.signature
    fields: dict[str, _Field] = {}
    any_frozen_base = has_dataclass_bases = False
    all_frozen_bases = True
    for base in cls.__mro__[-1:0:-1]:
        lazy = vars(base).get("__dataclass_fields__")
        if lazy is None:
            continue
        if not isinstance(lazy, _Lazy) or base.__class__ is not type:
            return _by_dataclasses(cls, options)  # made by dataclasses (or resolved)
        has_dataclass_bases = True
        fields.update(lazy.spec.fields)
        any_frozen_base = any_frozen_base or lazy.spec.options["frozen"]
        all_frozen_bases = all_frozen_bases and lazy.spec.options["frozen"]
    if type(cls) is not type:
        return _by_dataclasses(cls, options)

    own = [
        _own_field(cls, name, annotation, opts["kw_only"])
        for name, annotation in annotations.items()
    ]
    for f in own:
        fields[f.name] = f
        if isinstance(getattr(cls, f.name, None), _Field):
            if f.default is MISSING:
                delattr(cls, f.name)
            else:
                setattr(cls, f.name, f.default)
    for name, value in vars(cls).items():
        if isinstance(value, _Field) and name not in annotations:
            raise TypeError(f"{name!r} is a field but has no type annotation")
    if has_dataclass_bases and any_frozen_base and not opts["frozen"]:
        raise TypeError("cannot inherit non-frozen dataclass from a frozen one")
    # Before 3.13 one frozen dataclass base is enough; from 3.13 on every one must be frozen.
    if (
        has_dataclass_bases
        and opts["frozen"]
        and not (all_frozen_bases if _PY313 else any_frozen_base)
    ):
        raise TypeError("cannot inherit frozen dataclass from a non-frozen one")
    spec = _Spec(fields, own, opts)
    cls.__dataclass_params__ = _Lazy(spec, "__dataclass_params__")  # type: ignore[attr-defined]
    cls.__dataclass_fields__ = _Lazy(spec, "__dataclass_fields__")  # type: ignore[attr-defined]

    class_hash = vars(cls).get("__hash__", MISSING)
    has_explicit_hash = not (
        class_hash is MISSING or (class_hash is None and "__eq__" in vars(cls))
    )
    module = sys.modules.get(cls.__module__)
    globals = vars(module) if module is not None else {}
    field_list = list(fields.values())
    std = [f for f in field_list if f.init and not f.kw_only]
    kw = [f for f in field_list if f.init and f.kw_only]
    if opts["init"]:
        self_name = "__dataclass_self__" if "self" in fields else "self"
        init = _init_fn(
            field_list, std, kw, opts["frozen"], hasattr(cls, "__post_init__"), self_name, globals
        )
        _set_new_attribute(cls, "__init__", init)
    if _PY313 and "__replace__" not in vars(cls):
        # Not through _set_new_attribute: that would rename the one shared function.
        cls.__replace__ = _replace  # type: ignore[attr-defined]
    if opts["repr"]:
        _set_new_attribute(cls, "__repr__", _repr_fn([f for f in field_list if f.repr], globals))
    if opts["eq"]:
        compared = [f for f in field_list if f.compare]
        if _PY313:
            eq = _eq_fn_313(compared, globals)
        else:
            eq = _cmp_fn(
                "__eq__", "==", _tuple_str("self", compared), _tuple_str("other", compared), globals
            )
        _set_new_attribute(cls, "__eq__", eq)
    if opts["frozen"]:
        for fn in _frozen_get_del_attr(cls, field_list, globals):
            if _set_new_attribute(cls, fn.__name__, fn):
                raise TypeError(f"Cannot overwrite attribute {fn.__name__} in class {cls.__name__}")
    if opts["eq"] and not has_explicit_hash:
        if opts["frozen"]:
            hashed = [f for f in field_list if (f.compare if f.hash is None else f.hash)]
            cls.__hash__ = _set_qualname(cls, _hash_fn(hashed, globals))  # type: ignore[method-assign]
        else:
            cls.__hash__ = None  # type: ignore[assignment]
    if not cls.__doc__:
        cls.__doc__ = cls.__name__ + _text_signature(std, kw)
    if opts["match_args"]:
        _set_new_attribute(cls, "__match_args__", tuple(f.name for f in std))
    abc.update_abstractmethods(cls)
    return cls


def _own_field(cls: type, name: str, annotation: str, kw_only: bool) -> _Field:
    default = getattr(cls, name, MISSING)
    f = default if isinstance(default, _Field) else field(default=default)
    f.name = name
    f.type = annotation
    if f.kw_only is MISSING:
        f.kw_only = kw_only
    if f.default is not MISSING and f.default.__class__.__hash__ is None:
        raise ValueError(
            f"mutable default {type(f.default)} for field {f.name} is not allowed: "
            "use default_factory"
        )
    return f


# What dataclasses (3.11) writes, the same texts and closure values.


def _set_qualname(cls: type, value: Any) -> Any:
    if isinstance(value, FunctionType):
        value.__qualname__ = f"{cls.__qualname__}.{value.__name__}"
    return value


def _set_new_attribute(cls: type, name: str, value: Any) -> bool:
    if name in vars(cls):
        return True
    _set_qualname(cls, value)
    setattr(cls, name, value)
    return False


def _tuple_str(obj_name: str, fields: list[_Field]) -> str:
    if not fields:
        return "()"
    return f"({','.join([f'{obj_name}.{f.name}' for f in fields])},)"


def _create_fn(
    name: str,
    args: Any,
    body: Any,
    *,
    globals: dict[str, Any],
    locals: dict[str, Any] | None = None,
    return_type: Any = MISSING,
) -> Any:
    if locals is None:
        locals = {}
    return_annotation = ""
    if return_type is not MISSING:
        locals["_return_type"] = return_type
        return_annotation = "->_return_type"
    args = ",".join(args)
    body = "\n".join(f"  {b}" for b in body)
    txt = f" def {name}({args}){return_annotation}:\n{body}"
    local_vars = ", ".join(locals.keys())
    txt = f"def __create_fn__({local_vars}):\n{txt}\n return {name}"
    ns: dict[str, Any] = {}
    _exec(txt, globals, ns)
    return ns["__create_fn__"](**locals)


def _field_assign(frozen: bool, name: str, value: str, self_name: str) -> str:
    if frozen:
        return f"__dataclass_builtins_object__.__setattr__({self_name},{name!r},{value})"
    return f"{self_name}.{name}={value}"


def _field_init(f: _Field, frozen: bool, locals: dict[str, Any], self_name: str) -> str | None:
    default_name = f"_dflt_{f.name}"
    if f.default_factory is not MISSING:
        locals[default_name] = f.default_factory
        if f.init:
            value = f"{default_name}() if {f.name} is _HAS_DEFAULT_FACTORY else {f.name}"
        else:
            value = f"{default_name}()"
    elif f.init:
        if f.default is not MISSING:
            locals[default_name] = f.default
        value = f.name
    else:
        return None
    return _field_assign(frozen, f.name, value, self_name)


def _init_param(f: _Field) -> str:
    if f.default is MISSING and f.default_factory is MISSING:
        default = ""
    elif f.default is not MISSING:
        default = f"=_dflt_{f.name}"
    else:
        default = "=_HAS_DEFAULT_FACTORY"
    return f"{f.name}:_type_{f.name}{default}"


def _init_fn(
    fields: list[_Field],
    std_fields: list[_Field],
    kw_only_fields: list[_Field],
    frozen: bool,
    has_post_init: bool,
    self_name: str,
    globals: dict[str, Any],
) -> Any:
    seen_default: _Field | None = None
    for f in std_fields:
        if not (f.default is MISSING and f.default_factory is MISSING):
            seen_default = f
        elif seen_default is not None:
            after = f" {seen_default.name!r}" if _PY313 else ""
            raise TypeError(f"non-default argument {f.name!r} follows default argument{after}")
    locals: dict[str, Any] = {f"_type_{f.name}": f.type for f in fields}
    locals.update(
        {
            "MISSING": MISSING,
            "_HAS_DEFAULT_FACTORY": _HAS_DEFAULT_FACTORY,
            "__dataclass_builtins_object__": object,
        }
    )
    body_lines = []
    for f in fields:
        line = _field_init(f, frozen, locals, self_name)
        if line:
            body_lines.append(line)
    if has_post_init:
        body_lines.append(f"{self_name}.__post_init__()")
    if not body_lines:
        body_lines = ["pass"]
    params = [_init_param(f) for f in std_fields]
    if kw_only_fields:
        params += ["*"]
        params += [_init_param(f) for f in kw_only_fields]
    return _create_fn(
        "__init__",
        [self_name, *params],
        body_lines,
        locals=locals,
        globals=globals,
        return_type=None,
    )


def _recursive_repr(user_function: Any) -> Any:
    repr_running: set[tuple[int, int]] = set()

    @functools.wraps(user_function)
    def wrapper(self: object) -> Any:
        key = id(self), get_ident()
        if key in repr_running:
            return "..."
        repr_running.add(key)
        try:
            result = user_function(self)
        finally:
            repr_running.discard(key)
        return result

    return wrapper


def _repr_fn(fields: list[_Field], globals: dict[str, Any]) -> Any:
    fn = _create_fn(
        "__repr__",
        ("self",),
        [
            'return self.__class__.__qualname__ + f"('
            + ", ".join([f"{f.name}={{self.{f.name}!r}}" for f in fields])
            + ')"'
        ],
        globals=globals,
    )
    return _recursive_repr(fn)


def _frozen_get_del_attr(cls: type, fields: list[_Field], globals: dict[str, Any]) -> Any:
    locals = {"cls": cls, "FrozenInstanceError": _frozen_instance_error}
    fields_str = "(" + ",".join(repr(f.name) for f in fields) + ",)" if fields else "()"
    return (
        _create_fn(
            "__setattr__",
            ("self", "name", "value"),
            (
                f"if type(self) is cls or name in {fields_str}:",
                ' raise FrozenInstanceError(f"cannot assign to field {name!r}")',
                "super(cls, self).__setattr__(name, value)",
            ),
            locals=dict(locals),
            globals=globals,
        ),
        _create_fn(
            "__delattr__",
            ("self", "name"),
            (
                f"if type(self) is cls or name in {fields_str}:",
                ' raise FrozenInstanceError(f"cannot delete field {name!r}")',
                "super(cls, self).__delattr__(name)",
            ),
            locals=dict(locals),
            globals=globals,
        ),
    )


def _cmp_fn(name: str, op: str, self_tuple: str, other_tuple: str, globals: dict[str, Any]) -> Any:
    return _create_fn(
        name,
        ("self", "other"),
        [
            "if other.__class__ is self.__class__:",
            f" return {self_tuple}{op}{other_tuple}",
            "return NotImplemented",
        ],
        globals=globals,
    )


def _eq_fn_313(fields: list[_Field], globals: dict[str, Any]) -> Any:
    # 3.13's __eq__: the same object is equal to itself, then the fields one by one (a field
    # that is not equal to itself, NaN, no longer makes an instance unequal to itself).
    terms = " and ".join([f"self.{f.name}==other.{f.name}" for f in fields]) or "True"
    return _create_fn(
        "__eq__",
        ("self", "other"),
        [
            "if self is other:",
            " return True",
            "if other.__class__ is self.__class__:",
            f" return {terms}",
            "return NotImplemented",
        ],
        globals=globals,
    )


def _replace(self: Any, /, **changes: Any) -> Any:
    """3.13's ``__replace__`` (``copy.replace``): ``dataclasses.replace``, imported then (it
    needs the real fields)."""
    return import_now("dataclasses").replace(self, **changes)


def _hash_fn(fields: list[_Field], globals: dict[str, Any]) -> Any:
    return _create_fn(
        "__hash__", ("self",), [f"return hash({_tuple_str('self', fields)})"], globals=globals
    )


def _text_signature(std: list[_Field], kw: list[_Field]) -> str:
    """``str(inspect.signature(cls))`` of the generated ``__init__`` (string annotations)."""

    def param(f: _Field) -> str:
        text = f"{f.name}: {f.type!r}"
        if f.default is not MISSING:
            return f"{text} = {f.default!r}"
        if f.default_factory is not MISSING:
            return f"{text} = <factory>"
        return text

    params = [param(f) for f in std]
    if kw:
        params += ["*", *(param(f) for f in kw)]
    return f"({', '.join(params)})"


start()
