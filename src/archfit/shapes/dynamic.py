"""Bounded dynamic shapes, where the backend offers them (OpenVINO): one engine for a whole
model whose inputs' dim 1 takes any length in [low, high], so every input runs at its exact
length with no padding and no bucket table. Only for models that fit the target whole (one
partition, nothing on the CPU): a partitioned graph would need every host op at every length.

torch.export captures the model with a symbolic length (a `Dim` bounded by the row length;
at least 2, because torch specialises sizes 0 and 1), and the target compiles that program with
the bounds (Target.compile_dynamic)."""
from __future__ import annotations


import torch

from ..core.capture import TensorSpec
from ..core.engines import EngineModule
from ..core.module import ArchfitModule, Parts, check_values, describe
from ..errors import ArchfitError, ArtifactError, CompileError, InputError, first_line

LOW = 2  # torch.export specialises dims of size 0 and 1: the shortest length compiled is 2


class DynamicModule(ArchfitModule):
    """One engine over keyword inputs [rows, length], length anywhere in low..high (the specs hold
    the largest shape). More rows than compiled run in chunks, fewer are padded with copies of the
    last; lengths below `low` are padded with each input's pad value and cut back."""

    kind = "dynamic"

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

    def longest(self) -> int | None:
        return self.high

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

    def stored_parts(self) -> Parts:
        """Its one engine and input bounds, no host program."""
        table = {"dynamic": {"outputs": list(self.outputs), "low": self.low, "pad_values": self.pad_values}}
        return Parts(self.inputs, engines=(("dynamic", self.engine),), table=table)

    @classmethod
    def from_parts(cls, parts: Parts, manifest: dict, source: str) -> "DynamicModule":
        d, inputs = parts.table.get("dynamic"), parts.inputs
        outputs, low, pads = (d.get("outputs"), d.get("low"), d.get("pad_values")) if isinstance(d, dict) else (None,) * 3
        if not (len(parts.engines) == 1 and not parts.graphs and isinstance(outputs, list)
                and all(isinstance(o, str) for o in outputs) and type(low) is int
                and isinstance(pads, dict) and all(type(v) is int for v in pads.values()) and inputs
                and all(len(s.shape) == 2 for s in inputs) and 1 <= low <= inputs[0].shape[1]):
            raise ArtifactError(f"{source}: dynamic module table is malformed")
        return cls(parts.engines[0][1], tuple(inputs), tuple(outputs), low, {str(k): v for k, v in pads.items()},
                   str(manifest["target"]), str(manifest["precision"]), bool(manifest["emulated"]), manifest=manifest)

    @classmethod
    def describe_component(cls, entry: dict) -> list[str]:
        d = entry.get("dynamic") or {}
        high = entry["inputs"][0]["shape"][1] if entry.get("inputs") else "?"
        return [f"dynamic length: one engine for lengths {d.get('low')}..{high}, no buckets"]

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
    handle = EngineModule(engine, 0, target.name, [v.dtype for v in out.values()], precision)
    return DynamicModule(handle, specs, tuple(out), LOW, pad_values, target.name, precision, target.emulated, report)
