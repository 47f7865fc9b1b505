"""Variable input sizes at run time: pick the smallest bucket that fits, pad each input with its
own pad value, run that bucket's static-shape module, slice the outputs back; split batches larger
than the compiled batch into chunks (torch.neuron's dynamic batch) and concatenate the results."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch.utils import _pytree as pytree

from ..core.module import MAX_DIM, ArchfitModule, CompiledModule, Parts, flatten_call
from ..errors import ArtifactError, InputError
from .choose import BucketChoice

MAX_BUCKETS = 4096  # a file's bucket table, at most


@dataclass(frozen=True)
class Padding:
    """How inputs are padded and outputs unpadded; saved with the module."""

    dims: dict[str, int]  # varying input -> dim (all tied to one size)
    pad_values: dict[str, float]  # input -> pad value (default 0)
    follow: tuple[tuple[int, ...], ...]  # per flat output: dims that follow the varying size
    batch_follow: tuple[tuple[int, ...], ...] | None = None  # per flat output: batch dims (dynamic batch)

    def to_dict(self) -> dict:
        return {"dims": self.dims, "pad_values": self.pad_values, "follow": [list(f) for f in self.follow],
                "batch_follow": None if self.batch_follow is None else [list(f) for f in self.batch_follow]}

    @classmethod
    def from_dict(cls, d: dict) -> "Padding":
        bf = d.get("batch_follow")
        return cls({k: int(v) for k, v in d["dims"].items()}, {k: float(v) for k, v in d["pad_values"].items()},
                   tuple(tuple(f) for f in d["follow"]), None if bf is None else tuple(tuple(f) for f in bf))


def resize(t: torch.Tensor, dim: int, size: int, pad_value: float) -> torch.Tensor:
    """Cut or pad `t` along `dim` to `size`."""
    have = t.shape[dim]
    if have >= size:
        return t.narrow(dim, 0, size)
    shape = list(t.shape)
    shape[dim] = size - have
    return torch.cat([t, torch.full(shape, pad_value, dtype=t.dtype)], dim=dim)


def cut(t: torch.Tensor, dims: tuple[int, ...], size: int) -> torch.Tensor:
    for d in dims:
        t = t.narrow(d, 0, size)
    return t


class BucketedModule(ArchfitModule):
    """Returned by `archfit.trace(..., buckets=...)` or `dynamic_batch=True`: one static-shape
    CompiledModule per bucket, called like the original model with any size up to the largest
    bucket (and any batch size when dynamic_batch). Its report is the largest bucket's (every
    bucket is partitioned alike)."""

    kind = "bucketed"

    def __init__(self, modules: dict[int, CompiledModule], padding: Padding, choice=None, safety=None,
                 manifest: dict | None = None, fewer: dict[tuple[int, int], CompiledModule] | None = None):
        sizes = tuple(sorted(modules))
        top = modules[sizes[-1]]
        super().__init__(top.target, top.precision, top.emulated, top.report, manifest)
        self.sizes = sizes
        self.buckets = torch.nn.ModuleDict({str(s): modules[s] for s in self.sizes})
        self.padding = padding
        self.choice = choice  # shapes.choose.BucketChoice when chosen from a histogram
        self.safety = safety  # padding-safety checks made at compile time: [(length, bucket, max error)]
        self.in_spec, self.out_spec, self.inputs = top.in_spec, top.out_spec, top.inputs
        # a dynamic batch's smaller row counts (batch_sizes), per bucket: "SIZExROWS" -> module
        self.fewer = torch.nn.ModuleDict({f"{s}x{r}": m for (s, r), m in sorted((fewer or {}).items())})
        self.row_counts = tuple(sorted({r for _s, r in (fewer or {})}))
        index = {s.name: i for i, s in enumerate(self.inputs)}
        self._varying = [(index[name], dim) for name, dim in padding.dims.items()]

    @property
    def batch(self) -> int | None:
        return self.inputs[0].shape[0] if self.padding.batch_follow is not None else None

    def size_of(self, flat: list[torch.Tensor]) -> int:
        """The size along the varying dims of a call's flat inputs; refused, in one line, when the
        inputs disagree or it is over the largest bucket."""
        if not self._varying:
            return self.sizes[-1]
        for i, d in self._varying:
            spec, value = self.inputs[i], flat[i]
            if not isinstance(value, torch.Tensor) or value.dim() != len(spec.shape):
                got = f"{value.dim()}-d" if isinstance(value, torch.Tensor) else type(value).__name__
                raise InputError(f"input {spec.name!r}: expected a {len(spec.shape)}-d tensor (its dim {d} varies), "
                                 f"got {got}")
            if value.shape[d] == 0:
                raise InputError(f"input {spec.name!r} dim {d} has size 0; a bucketed module takes sizes 1.."
                                 f"{self.sizes[-1]}")
        sizes = {self.inputs[i].name: flat[i].shape[d] for i, d in self._varying}
        size = next(iter(sizes.values()))
        if len(set(sizes.values())) > 1:
            raise InputError(f"inputs {', '.join(f'{k!r} (dim {self.padding.dims[k]}) = {v}' for k, v in sizes.items())} "
                             f"vary together and must have the same size")
        if size > self.sizes[-1]:
            name, dim = next(iter(self.padding.dims.items()))
            raise InputError(f"input {name!r} dim {dim} has size {size}, larger than the largest bucket "
                             f"{self.sizes[-1]}; cut the input or trace with a larger bucket")
        return size

    def bucket_for(self, size: int) -> int:
        """The smallest bucket that holds `size` (size_of refuses one over the largest)."""
        return next(s for s in self.sizes if s >= size)

    def rows_for(self, n: int) -> int:
        """The rows of the engine call that holds `n` rows (n up to the batch): the smallest
        compiled row count that holds them."""
        return next((r for r in self.row_counts if r >= n), self.batch)

    def rows_computed(self, n: int) -> int:
        """Rows the engines compute for a batch of `n` rows (full chunks, then the last one's engine)."""
        full, rest = divmod(n, self.batch)
        return full * self.batch + (self.rows_for(rest) if rest else 0)

    def run_bucket(self, flat: list[torch.Tensor], rows: int | None = None) -> list[torch.Tensor]:
        """One call at its size: padded to its bucket, run, outputs cut back. `rows`: a smaller
        compiled row count to run on (its inputs have that many rows)."""
        size = self.size_of(flat)
        bucket = self.bucket_for(size)
        module = self.buckets[str(bucket)] if rows in (None, self.batch) else self.fewer[f"{bucket}x{rows}"]
        if self._varying:
            flat = list(flat)
            for i, d in self._varying:
                name = self.inputs[i].name
                flat[i] = resize(flat[i], d, bucket, self.padding.pad_values.get(name, 0))
        out = module.run_flat(flat)
        if size == bucket:
            return out
        return [cut(o, f, size) if f else o for o, f in zip(out, self.padding.follow)]

    def run_batch(self, flat: list[torch.Tensor]) -> list[torch.Tensor]:
        """One call of any batch size (dynamic batch): in chunks of the compiled batch, the last on
        the smallest compiled row count that holds it, padded to it."""
        if not all(isinstance(t, torch.Tensor) for t in flat):
            raise InputError(f"dynamic batch: every input must be a tensor, got "
                             f"{', '.join(type(t).__name__ for t in flat)}")
        n = flat[0].shape[0] if flat[0].dim() else 0
        if n == 0:
            raise InputError(f"dynamic batch: input {self.inputs[0].name!r} has batch size 0")
        if any(t.dim() == 0 or t.shape[0] != n for t in flat):
            raise InputError(f"dynamic batch: every input must have the batch size {n} in dim 0, got "
                             f"{', '.join(f'{s.name!r} {tuple(t.shape)}' for s, t in zip(self.inputs, flat))}")
        b = self.batch
        if n == b:
            return self.run_bucket(flat)
        chunks = []
        for start in range(0, n, b):
            part = [t[start:start + b] for t in flat]
            m = part[0].shape[0]
            rows = self.rows_for(m)
            if m < rows:  # pad with copies of the last row: real values keep every op well-defined
                part = [torch.cat([t, t[-1:].expand(rows - m, *t.shape[1:])]) for t in part]
            out = self.run_bucket(part, rows)
            chunks.append([cut(o, f, m) for o, f in zip(out, self.padding.batch_follow)])
        return [torch.cat(list(parts), dim=f[0]) for parts, f in zip(zip(*chunks), self.padding.batch_follow)]

    def forward(self, *args, **kwargs):
        flat = flatten_call(args, kwargs, self.in_spec, self.inputs)
        with torch.no_grad():
            out = self.run_batch(flat) if self.padding.batch_follow is not None else self.run_bucket(flat)
        return pytree.tree_unflatten(out, self.out_spec)

    def stored_parts(self) -> Parts:
        choice = self.choice
        table = {"buckets": {"sizes": list(self.sizes), "padding": self.padding.to_dict(),
                             "choice": None if choice is None else asdict(choice),
                             "safety": [list(s) for s in self.safety or ()], "row_counts": list(self.row_counts)}}
        graphs = [(f"bucket_{s}/", self.buckets[str(s)]) for s in self.sizes]
        graphs += [(f"bucket_{s}_rows_{r}/", self.fewer[f"{s}x{r}"]) for s in self.sizes for r in self.row_counts]
        return Parts(self.inputs, graphs=tuple(graphs), specs=(self.in_spec, self.out_spec), table=table)

    @classmethod
    def from_parts(cls, parts: Parts, manifest: dict, source: str) -> "BucketedModule":
        buckets = parts.table["buckets"]
        sizes, modules = buckets["sizes"], [m for _prefix, m in parts.graphs]
        rows = buckets.get("row_counts", [])  # files before batch_sizes have none
        if not (isinstance(sizes, list) and 0 < len(sizes) <= MAX_BUCKETS and isinstance(rows, list)
                and len(modules) == len(sizes) * (1 + len(rows)) and all(type(r) is int and r > 0 for r in rows)
                and all(type(s) is int and 0 <= s <= MAX_DIM for s in sizes)):
            raise ArtifactError(f"{source}: bucket table is malformed")
        c = buckets["choice"]
        choice = BucketChoice(**{**c, "boundaries": tuple(c["boundaries"])}) if c else None
        fewer = dict(zip([(s, r) for s in sizes for r in rows], modules[len(sizes):]))
        return cls(dict(zip(sizes, modules[:len(sizes)])), Padding.from_dict(buckets["padding"]), choice,
                   tuple(tuple(s) for s in buckets["safety"]), manifest, fewer)

    @classmethod
    def describe_component(cls, entry: dict) -> list[str]:
        b = entry["buckets"]
        dims = ", ".join(f"{k}[{v}]" for k, v in b["padding"]["dims"].items())
        rows = b.get("row_counts") or []
        batch = (", dynamic batch" + (f" (also compiled at {', '.join(map(str, rows))} row(s))" if rows else "")
                 if b["padding"].get("batch_follow") else "")
        return [f"buckets: {', '.join(map(str, b['sizes']))} over {dims}{batch}" if dims else f"buckets: none{batch}"]

    def page(self) -> dict:
        rows = []
        for size in self.sizes:
            r = self.buckets[str(size)].report
            v = r.validation if r is not None else None
            rows.append({"size": size, "partitions": len(r.partitions) if r else None,
                         "cpu_ops": r.total_ops - r.supported_ops if r else None,
                         "ok": v.ok if v is not None else None, "max_rel": v.max_rel if v is not None else None})
        c = self.choice
        choice = None if c is None else {"padding_waste": c.padding_waste, "speedup": c.speedup,
                                         "ideal_speedup": c.ideal_speedup}
        return super().page() | {"buckets": {"rows": rows, "choice": choice, "batch": self.batch}}

    def longest(self) -> int | None:
        return self.sizes[-1] if self.padding.dims else self.buckets[str(self.sizes[-1])].longest()

    def summary(self) -> str:
        """Bucket table, chosen boundaries and their expected gain, as text lines."""
        lines = []
        if self._varying:
            dims = ", ".join(f"{k}[{v}]" for k, v in self.padding.dims.items())
            lines.append(f"buckets over {dims}: {', '.join(map(str, self.sizes))}")
        if self.choice is not None:
            c = self.choice
            lines.append(f"  chosen from the size histogram: expected padding waste {c.padding_waste:.1%}, expected "
                         f"speedup over pad-to-max {c.speedup:.2f}x ({c.share_of_ideal:.0%} of the "
                         f"{c.ideal_speedup:.2f}x that exact sizes would give)")
        if self.safety:
            worst = max(self.safety, key=lambda s: s[2])
            lines.append(f"  padding-safe: outputs at real positions match eager at {len(self.safety)} padded "
                         f"length(s) (worst max abs error {worst[2]:.2e}, length {worst[0]} in bucket {worst[1]})")
        if self.batch is not None and self.row_counts:
            lines.append(f"dynamic batch: compiled at batch {self.batch} and at {', '.join(map(str, self.row_counts))} "
                         f"row(s); larger batches run in chunks, a smaller one (or a last chunk) on the smallest that "
                         f"holds it")
        elif self.batch is not None:
            lines.append(f"dynamic batch: compiled at batch {self.batch}; larger batches run in chunks, smaller "
                         f"ones are padded")
        return "\n".join(lines)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, buckets={self.sizes}"
