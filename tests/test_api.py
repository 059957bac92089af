"""The public face: what plugsafe exports, and that no wasmtime type leaks into it."""

from __future__ import annotations

import inspect
import typing
from pathlib import Path

import plugsafe


def test_all_is_sorted_and_complete() -> None:
    assert plugsafe.__all__ == sorted(plugsafe.__all__)
    for name in plugsafe.__all__:
        assert hasattr(plugsafe, name), name
    public = {n for n in dir(plugsafe) if not n.startswith("_")}
    # Everything public at top level is in __all__ except the private submodules.
    assert public - set(plugsafe.__all__) <= {"annotations"}


def test_py_typed_marker_ships() -> None:
    assert (Path(plugsafe.__file__).parent / "py.typed").exists()


def _annotations_of(obj: object) -> list[str]:
    out = []
    members = inspect.getmembers(obj) if inspect.isclass(obj) else [("", obj)]
    for _, member in members:
        target = member.fget if isinstance(member, property) else member
        if callable(target):
            try:
                out.extend(str(v) for v in typing.get_type_hints(target).values())
            except Exception:
                out.extend(str(v) for v in getattr(target, "__annotations__", {}).values())
    return out


def test_no_wasmtime_type_in_public_signatures() -> None:
    for name in plugsafe.__all__:
        obj = getattr(plugsafe, name)
        for ann in _annotations_of(obj):
            assert "wasmtime" not in ann, f"{name}: {ann}"


def test_error_tree() -> None:
    p = plugsafe
    for cls in (
        p.PolicyError,
        p.PluginLoadError,
        p.PluginCallError,
        p.LimitExceeded,
        p.PluginClosedError,
    ):
        assert issubclass(cls, p.PlugsafeError)
    for cls in (p.InvalidModuleError, p.ImportNotAllowedError, p.AbiVersionError):
        assert issubclass(cls, p.PluginLoadError)
    for cls in (
        p.PluginTrap,
        p.HostFunctionError,
        p.AbiError,
        p.GuestError,
        p.ExportNotFoundError,
        p.SignatureError,
    ):
        assert issubclass(cls, p.PluginCallError)
    for cls in (
        p.FuelExhausted,
        p.DeadlineExceeded,
        p.MemoryLimitExceeded,
        p.HostCallLimitExceeded,
    ):
        assert issubclass(cls, p.LimitExceeded)
    assert issubclass(p.MemoryAccessError, p.AbiError)


def test_public_api_has_docstrings() -> None:
    for name in plugsafe.__all__:
        obj = getattr(plugsafe, name)
        if inspect.isclass(obj):
            assert obj.__doc__, name
            for mname, member in vars(obj).items():
                if mname.startswith("_") or not (callable(member) or isinstance(member, property)):
                    continue
                assert member.__doc__, f"{name}.{mname}"


def test_errors_docstring_draws_the_tree() -> None:
    from plugsafe import _errors

    doc = _errors.__doc__ or ""
    for name in plugsafe.__all__:
        obj = getattr(plugsafe, name)
        if inspect.isclass(obj) and issubclass(obj, BaseException):
            assert name in doc, name


def test_public_classes_live_at_plugsafe() -> None:
    # Reprs, tracebacks and generated docs show the public home, never a private module.
    for name in plugsafe.__all__:
        obj = getattr(plugsafe, name)
        if inspect.isclass(obj):
            assert obj.__module__ == "plugsafe", name
            assert repr(obj) == f"<class 'plugsafe.{name}'>", name
            assert "._" not in repr(obj), name
            typing.get_type_hints(obj)  # annotations still resolve from the new home


def test_a_plugins_entry_points_look_like_its_methods() -> None:
    # plugin.call and plugin.invoke are the call path's closures, set on the instance (one frame
    # per call); they must still read as the documented methods.
    with plugsafe.Host() as host:
        plugin = host.load(b'(module (func (export "one") (result i32) i32.const 1))', name="p")
        assert plugin.invoke("one") == 1
        assert plugsafe.Plugin.invoke(plugin, "one") == 1  # through the class: the same path
        for name in ("call", "invoke"):
            entry = getattr(plugin, name)
            method = getattr(plugsafe.Plugin, name)
            assert entry.__qualname__ == f"Plugin.{name}"
            assert entry.__doc__ == method.__doc__
            assert "._" not in repr(entry) and "<locals>" not in repr(entry)
            params = list(inspect.signature(method).parameters)[1:]  # without self
            assert list(inspect.signature(entry).parameters) == params
