"""The registry of module kinds. What archfit.trace returns and archfit.load gives back comes in
kinds: one static graph, buckets, one dynamic-length engine, packed rows, regions attached to the
user's model, a generator. Each kind is one ArchfitModule subclass that names itself
(`kind = "..."`) and carries its own hooks (core/module.py: what its file holds and how it comes
back, how `inspect` describes it, what `archfit run` feeds it); defining the class registers it.
artifact, serve and cli find a kind here by its name; nothing switches on a module's class.

A new kind is one file: the subclass, its hooks, and its import (README, Development)."""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .module import ArchfitModule

# the kinds archfit ships, by the module that defines each: imported when first asked for, so
# `import archfit` stays light and a file of a kind whose library is missing (seq2seq needs
# transformers) is refused by name, not by an ImportError
BUILTIN = {
    "static": "archfit.core.module", "bucketed": "archfit.shapes.dispatch", "dynamic": "archfit.shapes.dynamic",
    "packed": "archfit.shapes.packed", "attached": "archfit.regions.attached", "seq2seq": "archfit.seq2seq.generate",
    "causal": "archfit.causal.module",
}
_KINDS: dict[str, type[ArchfitModule]] = {}


def register_kind(cls: type[ArchfitModule]) -> type[ArchfitModule]:
    """Register `cls` under its `kind` (ArchfitModule subclasses do this when defined). A name
    another class holds is refused: two kinds under one name would load each other's files."""
    name = cls.__dict__.get("kind")
    if not isinstance(name, str) or not name.isidentifier():
        raise TypeError(f"{cls.__qualname__}: a module kind needs a name, kind = 'word'")
    held = _KINDS.get(name)
    if held is not None and (held.__module__, held.__qualname__) != (cls.__module__, cls.__qualname__):
        raise TypeError(f"module kind {name!r} is held by {held.__module__}.{held.__qualname__}; "
                        f"choose another name for {cls.__module__}.{cls.__qualname__}")
    _KINDS[name] = cls
    return cls


def kind_class(name: str) -> type[ArchfitModule] | None:
    """The class of kind `name`, or None when no kind has that name here (or its library is missing)."""
    if name not in _KINDS and name in BUILTIN:
        try:
            importlib.import_module(BUILTIN[name])
        except ImportError:
            return None
    return _KINDS.get(name)


def kind_names() -> list[str]:
    """Every kind registered so far, the built-in ones first."""
    return list(BUILTIN) + sorted(set(_KINDS) - set(BUILTIN))
