"""What a target is: a name, support rules and a compile function (ExecuTorch-style split:
deciding which nodes go to a backend is separate from turning a subgraph into an engine)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

import torch
from torch import fx

PRECISIONS = ("fp32", "bf16")


class Engine(Protocol):
    """A compiled subgraph at fixed shapes: flat tensors in, flat tensors out. Engines that can
    be saved also have `serialize() -> bytes`, read back by their target's `load`."""

    def run(self, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]: ...


# A support rule returns None when the target lowers the node, else a short reason.
SupportRule = Callable[[fx.Node], "str | None"]
# compile(graph_module, example_inputs, precision) -> Engine. The graph module holds its
# weights as attributes, takes flat tensors and returns a tuple of tensors.
CompileFn = Callable[[fx.GraphModule, Sequence[torch.Tensor], str], Engine]


@dataclass(frozen=True)
class Target:
    name: str
    backend: str  # the library that runs it, e.g. "openvino"
    device: str  # where the compiled parts run, e.g. "CPU"
    description: str
    supports: SupportRule
    compile: CompileFn
    # dtypes the target can take and produce at a node; others fall back with a dtype reason
    dtypes: frozenset[torch.dtype] = field(
        default_factory=lambda: frozenset(
            {torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.int8,
             torch.uint8, torch.bool}
        )
    )
    precisions: tuple[str, ...] = PRECISIONS
    default_precision: str = "fp32"
    # returns None when usable on this machine, else why not (missing package, ...)
    unavailable: Callable[[], "str | None"] = lambda: None
    emulated: bool = False  # runs on a CPU stand-in for hardware that is not here
    # Partitions this target's own SDK would not compile: plan -> {partition index: why}.
    policy: "Callable[[object], dict[int, str]] | None" = None
    # Time partitions against PyTorch at compile time? Meaningless for emulated targets,
    # whose CPU stand-in says nothing about the chip's speed.
    measure_payoff: bool = True
    min_partition_size: int = 2  # compute ops; Neuron's minimum_segment_size default is 2 too
    chip: "object | None" = None  # estimate.ChipSpec for roofline latency estimates
    # bytes from engine.serialize() -> Engine, without compiling again; None: cannot be saved
    load: "Callable[[bytes], Engine] | None" = None
    versions: Callable[[], dict] = lambda: {}  # backend package versions, for the cache key and files

    def __repr__(self) -> str:
        return f"Target({self.name!r}, backend={self.backend!r}, device={self.device!r})"


def export_partition(gm: fx.GraphModule, example_inputs: Sequence[torch.Tensor]) -> torch.export.ExportedProgram:
    """Re-capture a partition (already ATen) as an ExportedProgram, the form backends convert."""
    return torch.export.export(gm, tuple(example_inputs), strict=False)


def to_numpy(t: torch.Tensor):
    """Zero-copy for contiguous CPU tensors (the common case at partition boundaries)."""
    return t.detach().contiguous().numpy()


def op_label(op) -> str:
    if isinstance(op, torch._ops.OpOverload):
        return f"{op.namespace}.{op._opname}"
    return getattr(op, "__name__", str(op))


def listed_or_decomposed(is_listed: Callable[[object], bool], source: str) -> SupportRule:
    """Support rule from a backend's published op list: a node is supported when its op is
    listed, or when every core ATen op it decomposes into is (see capture.CORE_OPS_KEY)."""
    from ..capture import CORE_OPS_KEY

    def rule(node: fx.Node) -> str | None:
        if not isinstance(node.target, torch._ops.OpOverload) or is_listed(node.target):
            return None
        missing = [op for op in node.meta.get(CORE_OPS_KEY, (node.target,)) if not is_listed(op)]
        if not missing:
            return None
        if missing == [node.target]:
            return f"not in {source}"
        return f"not in {source}, nor is its decomposition's {', '.join(dict.fromkeys(map(op_label, missing)))}"

    return rule
