"""The engines of a compiled graph: the typed handle each partition's engine sits in, and the one
place that names them and finds them by partition.

A traced host graph (fx.GraphModule) holds partition i's engine as its submodule `target_i`, the
name torch.fx's fuser gives the partition; a loaded one (artifact.HostProgram) holds it under the
same name in its `engines` dict. Nothing else spells or parses that name."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import fx

from ..targets.base import Engine

PREFIX = "target_"  # fuse_by_partitions(prefix=PREFIX) names partition i's submodule PREFIX + str(i)


class EngineModule(torch.nn.Module):
    """Stands in for a partition's submodule: calls the compiled engine. What it runs on is
    fields, not names: the target (per_partition mixes them), the precision it computes in, and
    the partition it replaces."""

    def __init__(self, engine: Engine, index: int, target: str, out_dtypes: Sequence[torch.dtype],
                 precision: str | None = None):
        super().__init__()
        self.engine = engine
        self.index = index
        self.target = target
        self.precision = precision
        self.out_dtypes = tuple(out_dtypes)

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outs = self.engine.run(inputs)
        # Backends may narrow dtypes (e.g. int64 -> int32); hand PyTorch what it expects.
        return tuple(o if o.dtype == d else o.to(d) for o, d in zip(outs, self.out_dtypes))

    def extra_repr(self) -> str:
        return f"partition={self.index}, target={self.target!r}" + (f", {self.precision}" if self.precision else "")


def partition_name(index: int) -> str:
    """The host graph's name for partition `index`'s submodule."""
    return f"{PREFIX}{index}"


def partition_module(gm: torch.nn.Module, index: int) -> torch.nn.Module:
    """Partition `index`'s submodule of a traced host graph: its engine, or its eager subgraph
    before compiling."""
    return getattr(gm, partition_name(index))


def put_partition(gm: torch.nn.Module, index: int, module: torch.nn.Module) -> None:
    """Swap what runs partition `index` of a traced host graph (an engine, another target's
    engine, or the eager subgraph when timing it in PyTorch)."""
    setattr(gm, partition_name(index), module)


def engines_of(host: torch.nn.Module) -> list[tuple[str, EngineModule]]:
    """(name in the host graph, engine) of every engine a host graph calls, traced or loaded."""
    return [(name.rpartition(".")[2], m) for name, m in host.named_modules() if isinstance(m, EngineModule)]


def engine_named(host: torch.nn.Module, name: str) -> torch.nn.Module:
    """The submodule a host graph calls by `name` (a call_module node's target), traced or loaded;
    on every call of a module compiled whole, so a lookup, not a walk."""
    return getattr(host, name) if isinstance(host, fx.GraphModule) else host.engines[name]


def engines_in(module: torch.nn.Module) -> list[EngineModule]:
    """Every engine inside a module (a compiled model, its buckets, regions or generator parts)."""
    return [m for m in module.modules() if isinstance(m, EngineModule)]
