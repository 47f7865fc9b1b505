"""Stage 7: the module users call. Checks inputs, runs host code and engines, restores the
model's output structure. The host graph is fx-generated Python, which frees every
intermediate right after its last use (the jaxpr-interpreter discipline, for free)."""
from __future__ import annotations

import torch
from torch import fx
from torch.utils import _pytree as pytree

from .capture import TensorSpec
from .errors import InputError


def _fmt(spec_shape, dtype) -> str:
    return f"{tuple(spec_shape)} {str(dtype).replace('torch.', '')}"


class CompiledModule(torch.nn.Module):
    """Returned by `archfit.trace`: same inputs, same output structure as the traced model."""

    def __init__(self, graph_module: fx.GraphModule, in_spec: pytree.TreeSpec, out_spec: pytree.TreeSpec,
                 inputs: tuple[TensorSpec, ...], target: str, precision: str, report=None, emulated: bool = False):
        super().__init__()
        self.graph_module = graph_module
        self.in_spec = in_spec
        self.out_spec = out_spec
        self.inputs = inputs
        self.target = target
        self.precision = precision
        self.report = report
        self.emulated = emulated  # target partitions run on a CPU stand-in for the named chip

    def _check(self, flat: list) -> None:
        for spec, value in zip(self.inputs, flat):
            if not isinstance(value, torch.Tensor):
                raise InputError(f"input {spec.name!r}: expected a tensor {_fmt(spec.shape, spec.dtype)}, "
                                 f"got {type(value).__name__}")
            if tuple(value.shape) != spec.shape or value.dtype != spec.dtype:
                raise InputError(
                    f"input {spec.name!r}: expected {_fmt(spec.shape, spec.dtype)}, got "
                    f"{_fmt(value.shape, value.dtype)}; shapes are fixed at compile time: pad or "
                    f"resize the input, or trace again with an example of this shape"
                )

    def forward(self, *args, **kwargs):
        flat, spec = pytree.tree_flatten((args, kwargs))
        if spec != self.in_spec:
            names = ", ".join(i.name for i in self.inputs)
            raise InputError(
                f"called with {len(flat)} input(s) in another structure than traced; expected the "
                f"inputs ({names}) passed the same way (positional/keyword) as the example inputs"
            )
        self._check(flat)
        with torch.no_grad():
            out = self.graph_module(*flat)
        return pytree.tree_unflatten(list(out), self.out_spec)

    def extra_repr(self) -> str:
        emulated = ", EMULATED on the CPU" if self.emulated else ""
        return f"target={self.target!r}, precision={self.precision!r}{emulated}"
