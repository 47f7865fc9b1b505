"""Targets are found by name. Built-ins register on import; third parties either call
`archfit.register_target(...)` or expose a Target under the `archfit.targets` entry point group."""
from __future__ import annotations

from importlib import import_module
from importlib.metadata import entry_points

from ..errors import TargetError
from .base import Target

_TARGETS: dict[str, Target] = {}
_BUILTIN_MODULES = ("archfit.targets.openvino", "archfit.targets.onnxruntime", "archfit.targets.neuron")
_loaded = False


def register_target(target: Target, *, replace: bool = False) -> Target:
    if not isinstance(target, Target):
        raise TargetError(f"register_target expects an archfit.Target, got {type(target).__name__}")
    if target.name in _TARGETS and not replace and _TARGETS[target.name] is not target:
        raise TargetError(f"a target named {target.name!r} is already registered; pass replace=True")
    _TARGETS[target.name] = target
    return target


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for mod in _BUILTIN_MODULES:
        import_module(mod)
    for ep in entry_points(group="archfit.targets"):
        obj = ep.load()
        register_target(obj() if callable(obj) and not isinstance(obj, Target) else obj, replace=True)


def get_target(target: str | Target) -> Target:
    if isinstance(target, Target):
        return target
    _load_all()
    if target not in _TARGETS:
        raise TargetError(f"unknown target {target!r}; known targets: {', '.join(sorted(_TARGETS))}")
    t = _TARGETS[target]
    why = t.unavailable()
    if why:
        raise TargetError(f"target {target!r} is not usable on this machine: {why}")
    return t


def list_targets() -> list[Target]:
    _load_all()
    return list(_TARGETS.values())
