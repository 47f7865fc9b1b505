"""Bounded dynamic shapes, where the backend offers them (OpenVINO): one engine for a whole
model whose inputs' dim 1 takes any length in [low, high], so every input runs at its exact
length with no padding and no bucket table. Only for models that fit the target whole (one
partition, nothing on the CPU): a partitioned graph would need every host op at every length.

torch.export captures the model with a symbolic length (a `Dim` bounded by the row length;
at least 2, because torch specialises sizes 0 and 1), and the target compiles that program with
the bounds (Target.compile_dynamic)."""
from __future__ import annotations

from typing import Any, Sequence

import torch

from ..core.capture import TensorSpec
from ..core.compile import EngineModule
from ..core.module import ArchfitModule, check_values, describe
from ..errors import ArchfitError, CompileError, InputError, first_line

LOW = 2  # torch.export specialises dims of size 0 and 1: the shortest length compiled is 2


class DynamicModule(ArchfitModule):
    """One engine over keyword inputs [rows, length], length anywhere in low..high (the specs hold
    the largest shape). More rows than compiled run in chunks, fewer are padded with copies of the
    last; lengths below `low` are padded with each input's pad value and cut back."""

    def __init__(self, engine: EngineModule, inputs: tuple[TensorSpec, ...], outputs: tuple[str, ...], low: int,
                 pad_values: dict[str, int], target: str, precision: str, emulated: bool = False, report=None,
                 manifest: dict | None = None):
        super().__init__(target, precision, emulated, report, manifest)
        self.engine = engine
        self.inputs = inputs
        self.outputs = outputs
        self.low = low
        self.pad_values = pad_values

    @property
    def rows(self) -> int:
        return self.inputs[0].shape[0]

    @property
    def high(self) -> int:
        return self.inputs[0].shape[1]

    def _check(self, given: dict) -> int:
        names = [s.name for s in self.inputs]
        if sorted(given) != sorted(names):
            raise InputError(f"inputs must be exactly {', '.join(names)}; got {', '.join(given) or 'none'}")
        length = given[names[0]].shape[1] if given[names[0]].dim() == 2 else -1
        for spec in self.inputs:
            t = given[spec.name]
            if t.dim() != 2 or t.dtype != spec.dtype or t.shape[1] != length or not 1 <= length <= self.high:
                raise InputError(f"input {spec.name!r}: expected [rows, 1..{self.high}] {describe((), spec.dtype)}"
                                 f" with the length of the others, got {describe(t.shape, t.dtype)}")
            check_values(spec, t, self._check_finite)
        return length

    def forward(self, **given) -> dict[str, torch.Tensor]:
        length = self._check(given)
        flat = [given[s.name] for s in self.inputs]
        if length < self.low:
            flat = [torch.cat([t, torch.full((t.shape[0], self.low - length), self.pad_values.get(s.name, 0),
                                             dtype=t.dtype)], dim=1) for s, t in zip(self.inputs, flat)]
        n, rows, chunks = flat[0].shape[0], self.rows, []
        with torch.no_grad():
            for start in range(0, n, rows):
                part = [t[start:start + rows] for t in flat]
                m = part[0].shape[0]
                if m < rows:
                    part = [torch.cat([t, t[-1:].expand(rows - m, *t.shape[1:])]) for t in part]
                chunks.append([o[:m] for o in self.engine(*[t.contiguous() for t in part])])
        outs = [torch.cat(parts) if len(parts) > 1 else parts[0] for parts in zip(*chunks)]
        return {k: o[:, :length] if length < self.low else o for k, o in zip(self.outputs, outs)}

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rows={self.rows}, length={self.low}..{self.high}"


def trace_dynamic(module: torch.nn.Module, example: dict[str, torch.Tensor], target, precision: str, high: int,
                  pad_values: dict[str, int], report=None) -> DynamicModule:
    """Compile `module` (keyword inputs [rows, length] -> dict of outputs) once for every length
    2..high on a target that takes bounded dynamic shapes."""
    if target.compile_dynamic is None:
        raise ArchfitError(f"target {target.name!r} compiles fixed shapes only; dynamic lengths need a backend with "
                           f"bounded dynamic shapes (openvino)")
    length = torch.export.Dim("length", min=LOW, max=high)
    try:
        ep = torch.export.export(module, (), kwargs=example, dynamic_shapes={k: {1: length} for k in example},
                                 strict=False)
    except Exception as e:  # noqa: BLE001 - the model refusing a symbolic length, named
        raise CompileError(f"dynamic lengths: the model does not capture with a length that varies from {LOW} to "
                           f"{high} ({type(e).__name__}: {first_line(e, 200)}); use buckets or packing") from e
    rows = next(iter(example.values())).shape[0]
    try:
        engine = target.compile_dynamic(ep, [[rows, (LOW, high)] for _ in example], precision)
    except Exception as e:  # noqa: BLE001 - a backend refusing the program becomes one line
        raise CompileError(f"{target.name} could not compile the model with dynamic lengths "
                           f"({type(e).__name__}: {first_line(e, 200)}); use buckets or packing") from e
    with torch.no_grad():
        out = module(**example)
    specs = tuple(TensorSpec(k, (rows, high), v.dtype) for k, v in example.items())
    return DynamicModule(EngineModule(engine, 0, target.name, [v.dtype for v in out.values()]), specs, tuple(out),
                         LOW, pad_values, target.name, precision, target.emulated, report)


def dynamic_entry(module: DynamicModule) -> dict[str, Any]:
    """The plain data a file keeps of a DynamicModule besides its engine."""
    return {"outputs": list(module.outputs), "low": module.low, "pad_values": module.pad_values}


def from_entry(engine: EngineModule, inputs: Sequence[TensorSpec], d: dict, manifest: dict, source: str) -> DynamicModule:
    from ..errors import ArtifactError

    outputs, low, pads = d.get("outputs"), d.get("low"), d.get("pad_values")
    if not (isinstance(outputs, list) and all(isinstance(o, str) for o in outputs) and type(low) is int
            and isinstance(pads, dict) and all(type(v) is int for v in pads.values()) and inputs
            and all(len(s.shape) == 2 for s in inputs) and 1 <= low <= inputs[0].shape[1]):
        raise ArtifactError(f"{source}: dynamic module table is malformed")
    return DynamicModule(engine, tuple(inputs), tuple(outputs), low, {str(k): v for k, v in pads.items()},
                         str(manifest["target"]), str(manifest["precision"]), bool(manifest["emulated"]),
                         manifest=manifest)
