"""Packed encoders: several variable-length sequences per compiled row.

A transformers-style encoder that takes `position_ids` and a prepared 4-D attention mask is
compiled once per row length for `[rows, length]` inputs: token ids, token-type ids, position ids
restarting at each sequence, and a sequence id per position from which the graph itself builds a
block-diagonal additive mask (so the engine's input is [rows, length], not [rows, 1, L, L], and no
sequence sees another; padding positions form a group of their own, which keeps every softmax row
finite). At run time sequences are packed into rows (packing.py), run, and each sequence's token
outputs are sliced back, pooled per sequence where asked.

Whether a model can be packed is decided by measurement, not by its class: every sequence's
outputs from packed rows must equal the model run on that sequence alone (the
cross-contamination check), in eager PyTorch before compiling and on the compiled module after."""
from __future__ import annotations

import logging
import sys
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import torch
from torch.utils import _pytree as pytree

from ..core.capture import output_names
from ..core.module import ArchfitModule
from ..errors import InputError, OptionError
from .dispatch import BucketedModule
from .dynamic import DynamicModule
from .packing import Pack, pack

log = logging.getLogger("archfit.packing")
ROW_INPUTS = ("input_ids", "token_type_ids", "position_ids", "sequence_ids")
POOLS = ("mean", "first")
STRATEGIES = ("pack", "buckets", "dynamic", "auto")


@dataclass(frozen=True)
class Packing:
    """How `archfit.trace(..., packing=Packing(...))` packs sequences into compiled rows.

    max_len: positions per row (the longest sequence it takes). rows: rows per engine call.
    sizes: row lengths to compile (default: max_len alone); or give the sequence lengths seen,
    as `sample` or `histogram` (histogram[i] sequences of length i + 1), and up to `max_sizes`
    row lengths are chosen from the fill of packed rows. outputs: model outputs to keep (by name;
    default: every output with one value per token; outputs with one value per row, such as
    BERT's pooler_output, mix the sequences of a row: they are left out, with a warning, and
    refused when named). pool: "mean" (over each sequence's own tokens) or "first"
    adds a per-sequence `pooled` output from the first kept output. lookahead: sequences packed
    together by `map` and `run` (larger packs tighter, smaller answers sooner)."""

    max_len: int = 384
    rows: int = 1
    sizes: tuple[int, ...] | None = None
    sample: tuple[int, ...] | None = None
    histogram: tuple[float, ...] | None = None
    max_sizes: int = 3
    outputs: tuple[str, ...] | None = None
    pool: str | None = None
    lookahead: int = 256
    max_per_row: int | None = None
    method: str = "spfhp"
    position_offset: int | None = None  # first position id of each sequence; default: found from the model
    strategy: str = "pack"
    measure_seconds: float = 2.0
    # fewer rows compiled too (below `rows`): a call with fewer packed rows runs on the smallest that holds them
    row_counts: tuple[int, ...] = ()

    def __post_init__(self):
        if self.max_len < 2 or self.rows < 1 or self.lookahead < 1 or self.max_sizes < 1:
            raise OptionError("Packing needs max_len >= 2, rows >= 1, lookahead >= 1 and max_sizes >= 1")
        if self.pool is not None and self.pool not in POOLS:
            raise OptionError(f"Packing pool={self.pool!r}: choose one of {', '.join(POOLS)}, or None")
        if self.strategy not in STRATEGIES:
            raise OptionError(f"Packing strategy={self.strategy!r}: choose one of {', '.join(STRATEGIES)}")
        if self.strategy == "auto" and self.sample is None and self.histogram is None:
            raise OptionError("Packing strategy='auto' measures on the lengths seen: give sample= or histogram=")
        if self.row_counts and not all(0 < r < self.rows for r in self.row_counts):
            raise OptionError(f"Packing row_counts {self.row_counts}: fewer rows than rows={self.rows}, at least 1")
        if self.sizes is not None and (not self.sizes or min(self.sizes) < 1 or max(self.sizes) != self.max_len):
            raise OptionError(f"Packing sizes {self.sizes} must be positive and end at max_len {self.max_len}")


@dataclass(frozen=True)
class PackSpec:
    """What the packed file needs besides its engines (saved with it, checked on load)."""

    sizes: tuple[int, ...]
    outputs: tuple[str, ...]
    token_types: bool
    position_offset: int
    pool: str | None
    lookahead: int
    max_per_row: int | None
    method: str
    left_out: tuple[str, ...] = ()  # model outputs not kept (one value per row)
    # "pack"; "buckets": one sequence per row (max_per_row 1); "dynamic": one sequence per row at its
    # exact length, one engine with a bounded dynamic length (shapes/dynamic.py)
    strategy: str = "pack"
    measured: dict[str, float] | None = None  # sequences/s of each strategy measured by strategy="auto"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Any, source: str = "the file") -> "PackSpec":
        from ..errors import ArtifactError

        try:
            spec = cls(tuple(int(s) for s in d["sizes"]), tuple(str(o) for o in d["outputs"]), bool(d["token_types"]),
                       int(d["position_offset"]), d["pool"], int(d["lookahead"]),
                       None if d["max_per_row"] is None else int(d["max_per_row"]), str(d["method"]),
                       tuple(str(o) for o in d.get("left_out", ())), str(d.get("strategy", "pack")),
                       None if d.get("measured") is None else {str(k): float(v) for k, v in d["measured"].items()})
        except (KeyError, TypeError, ValueError) as e:
            raise ArtifactError(f"{source}: packing table is malformed ({type(e).__name__})") from None
        if (not spec.sizes or min(spec.sizes) < 1 or spec.pool not in (None, *POOLS) or spec.method not in ("spfhp", "bfd")
                or spec.strategy not in ("pack", "buckets", "dynamic")
                or not 0 <= spec.position_offset < 2**31 or not 0 < spec.lookahead < 2**31):
            raise ArtifactError(f"{source}: packing table is malformed")
        return spec

    @property
    def max_len(self) -> int:
        return self.sizes[-1]


class PackedRows(torch.nn.Module):
    """The model over packed rows: the graph archfit compiles. Builds the block-diagonal mask
    from the sequence ids and keeps the named outputs, as a dict."""

    def __init__(self, model: torch.nn.Module, keep: Sequence[str], token_types: bool):
        super().__init__()
        self.model = model
        self.keep = tuple(keep)
        self.token_types = token_types

    def forward(self, input_ids, token_type_ids, position_ids, sequence_ids):
        same = sequence_ids[:, :, None] == sequence_ids[:, None, :]
        dtype = next(self.model.parameters()).dtype
        mask = torch.where(same, 0.0, torch.finfo(dtype).min).to(dtype)[:, None]  # additive: eager and sdpa alike
        extra = {"token_type_ids": token_type_ids} if self.token_types else {}
        out = self.model(input_ids=input_ids, attention_mask=mask, position_ids=position_ids, **extra)
        named = named_outputs(out)
        return {k: named[k] for k in self.keep}


def named_outputs(out) -> dict[str, torch.Tensor]:
    flat, spec = pytree.tree_flatten(out)
    return dict(zip(output_names(spec, len(flat)), flat))


def as_sequence(item: Any, index: int, token_types: bool) -> dict[str, torch.Tensor]:
    """One sequence as 1-D tensors: a dict of inputs (`input_ids`, optional `token_type_ids` and
    `attention_mask`, each 1-D or [1, n]) or the ids alone (tensor, array or list)."""
    if not isinstance(item, Mapping):
        item = {"input_ids": item}
    if "input_ids" not in item:
        raise InputError(f"sequence #{index}: no 'input_ids'; give a dict of inputs or the token ids alone")
    unknown = set(item) - {"input_ids", "token_type_ids", "attention_mask"}
    if unknown:
        raise InputError(f"sequence #{index}: input {sorted(unknown)[0]!r} is not taken by a packed model (it takes "
                         f"input_ids, token_type_ids and attention_mask; positions and masks are made per row)")
    out = {}
    for k, v in item.items():
        t = torch.as_tensor(v)
        if t.dim() == 2 and t.shape[0] == 1:
            t = t[0]
        if t.dim() != 1 or t.is_floating_point():
            raise InputError(f"sequence #{index}: {k!r} must be 1-d integer (or [1, n]), got {tuple(t.shape)} {t.dtype}")
        out[k] = t.long()
    n = out["input_ids"].shape[0]
    if any(t.shape[0] != n for t in out.values()):
        raise InputError(f"sequence #{index}: inputs of different lengths "
                         f"({', '.join(f'{k} {t.shape[0]}' for k, t in out.items())})")
    mask = out.pop("attention_mask", None)
    if mask is not None:
        real = int(mask.sum())
        if not bool((mask[:real] == 1).all()) or bool(mask[real:].any()):
            raise InputError(f"sequence #{index}: attention_mask must be ones then zeros (right padding)")
        out = {k: t[:real] for k, t in out.items()}
    if out["input_ids"].shape[0] == 0:
        raise InputError(f"sequence #{index} is empty")
    if token_types and "token_type_ids" not in out:
        out["token_type_ids"] = torch.zeros_like(out["input_ids"])
    if not token_types:
        out.pop("token_type_ids", None)
    return out


def build_rows(seqs: Sequence[dict], packs: Sequence[Pack], size: int, offset: int) -> dict[str, torch.Tensor]:
    """Row tensors [len(packs), size] in ROW_INPUTS order (token types zero when the model has none)."""
    rows = {k: torch.zeros(len(packs), size, dtype=torch.long) for k in ROW_INPUTS}
    for r, p in enumerate(packs):
        start = 0
        for j, i in enumerate(p.members):
            s = seqs[i]
            n = s["input_ids"].shape[0]
            rows["input_ids"][r, start:start + n] = s["input_ids"]
            if "token_type_ids" in s:
                rows["token_type_ids"][r, start:start + n] = s["token_type_ids"]
            rows["position_ids"][r, start:start + n] = torch.arange(offset, offset + n)
            rows["sequence_ids"][r, start:start + n] = j + 1
            start += n
    return rows


def _unpack(out: dict[str, torch.Tensor], seqs, packs: Sequence[Pack], pool: str | None, first: str,
            results: dict[int, dict]) -> None:
    for r, p in enumerate(packs):
        start = 0
        for i in p.members:
            n = seqs[i]["input_ids"].shape[0]
            res = {k: v[r:r + 1, start:start + n].clone() for k, v in out.items()}
            if pool == "mean":
                res["pooled"] = res[first].mean(dim=1)
            elif pool == "first":
                res["pooled"] = res[first][:, 0].clone()
            results[i] = res
            start += n


def run_packed(sequences: Sequence[Any], spec: PackSpec, call: Callable[..., dict],
               positions: list | None = None) -> list[dict[str, torch.Tensor]]:
    """Pack, run each group of rows through call(**rows) at the smallest row length that holds
    them, and cut every sequence's outputs back out, in the order given. `positions`, when
    given, receives (row length, rows, real tokens) per engine call group (the server's padding metric)."""
    seqs = [as_sequence(s, i, spec.token_types) for i, s in enumerate(sequences)]
    lengths = [s["input_ids"].shape[0] for s in seqs]
    too_long = next((i for i, n in enumerate(lengths) if n > spec.max_len), None)
    if too_long is not None:
        raise InputError(f"sequence #{too_long} has {lengths[too_long]} tokens, more than the packed rows' "
                         f"{spec.max_len}; cut it or trace with a larger Packing(max_len=...)")
    groups: dict[int, list[Pack]] = {}
    for p in pack(lengths, spec.max_len, spec.max_per_row, spec.method):
        size = p.used if spec.strategy == "dynamic" else next(s for s in spec.sizes if s >= p.used)
        groups.setdefault(size, []).append(p)
    results: dict[int, dict] = {}
    with torch.no_grad():
        for size, packs in sorted(groups.items()):
            out = call(**build_rows(seqs, packs, size, spec.position_offset))
            if positions is not None:
                positions.append((size, len(packs), sum(p.used for p in packs)))
            _unpack(out, seqs, packs, spec.pool, spec.outputs[0], results)
    return [results[i] for i in range(len(seqs))]


def repad(per: Sequence[dict[str, torch.Tensor]], batch: tuple[int, int]) -> dict[str, torch.Tensor]:
    """Per-sequence outputs (from run_packed) as one padded batch [B, n, ...] (zeros at padding);
    pooled outputs [B, ...]."""
    out = {}
    for k in per[0]:
        tok = per[0][k].dim() >= 2 and k != "pooled"
        shape = (batch[0], batch[1], *per[0][k].shape[2:]) if tok else (batch[0], *per[0][k].shape[1:])
        full = torch.zeros(shape, dtype=per[0][k].dtype)
        for b, res in enumerate(per):
            if tok:
                full[b, :res[k].shape[1]] = res[k][0]
            else:
                full[b] = res[k][0]
        out[k] = full
    return out


class PackedModule(ArchfitModule):
    """Returned by `archfit.trace(..., packing=...)`: `run(sequences)` packs a list of
    variable-length sequences into compiled rows and returns, per sequence in order, a dict of
    its outputs as if the model had run on it alone ([1, n, ...] token outputs, [1, ...] pooled);
    `map(iterable)` streams a corpus; calling it with a padded batch ([B, n] ids and a 2-D mask)
    returns the same outputs padded back to [B, n, ...] (zeros at padding)."""

    kind = "packed"
    takes = "sequences"

    def __init__(self, inner: BucketedModule | DynamicModule, spec: PackSpec, manifest: dict | None = None, checks=None):
        super().__init__(inner.target, inner.precision, inner.emulated, inner.report, manifest)
        self.inner = inner
        self.spec = spec
        self.checks = checks  # (sequences, rows, worst abs error) of the compile-time cross-contamination check

    def run(self, sequences: Sequence[Any], positions: list | None = None) -> list[dict[str, torch.Tensor]]:
        return run_packed(sequences, self.spec, self.inner, positions)

    def map(self, inputs: Iterable[Any], progress: bool | None = None) -> Iterator[dict[str, torch.Tensor]]:
        """Outputs per input, in order, packing `lookahead` inputs at a time; a progress bar on a
        terminal (progress=None: when stderr is one)."""
        total = len(inputs) if hasattr(inputs, "__len__") else None
        show = sys.stderr.isatty() if progress is None else progress
        bar = None
        if show:
            from rich.progress import Progress

            bar = Progress(transient=True)
            bar.start()
            task = bar.add_task("packing", total=total)
        try:
            window: list = []
            for item in inputs:
                window.append(item)
                if len(window) == self.spec.lookahead:
                    yield from self.run(window)
                    if bar is not None:
                        bar.advance(task, len(window))
                    window = []
            if window:
                yield from self.run(window)
                if bar is not None:
                    bar.advance(task, len(window))
        finally:
            if bar is not None:
                bar.stop()

    def forward(self, input_ids, attention_mask=None, token_type_ids=None) -> dict[str, torch.Tensor]:
        ids = torch.as_tensor(input_ids)
        if ids.dim() != 2:
            raise InputError(f"input 'input_ids': expected [batch, length], got {tuple(ids.shape)}")
        mask = torch.ones_like(ids) if attention_mask is None else torch.as_tensor(attention_mask)
        items = []
        for b in range(ids.shape[0]):
            item = {"input_ids": ids[b], "attention_mask": mask[b]}
            if token_type_ids is not None:
                item["token_type_ids"] = torch.as_tensor(token_type_ids)[b]
            items.append(item)
        return repad(self.run(items), tuple(ids.shape))

    def file_components(self) -> dict[str, ArchfitModule]:
        return {"main": self.inner}

    def file_meta(self) -> dict[str, Any]:
        return {"packing": self.spec.to_dict()}

    @classmethod
    def from_file(cls, components, meta, manifest, model=None, source="the file") -> "PackedModule":
        from ..errors import ArtifactError

        inner = components.get("main")
        spec = PackSpec.from_dict(meta.get("packing") if isinstance(meta, dict) else None, source)
        if spec.strategy == "dynamic":
            ok = isinstance(inner, DynamicModule) and inner.high == spec.max_len
        else:
            ok = isinstance(inner, BucketedModule) and tuple(inner.sizes) == spec.sizes and inner.batch is not None
        if not ok:
            raise ArtifactError(f"{source}: packed rows do not match its packing table")
        return cls(inner, spec, manifest)

    @classmethod
    def describe_file(cls, manifest: dict) -> list[str]:
        meta = manifest["meta"]
        p = meta.get("packing") if isinstance(meta.get("packing"), dict) else {}
        return super().describe_file(manifest) + [
            f"packed: several sequences per row, rows of {str(p.get('sizes'))[:80]}, strategy "
            f"{str(p.get('strategy'))[:20]}, outputs {str(p.get('outputs'))[:120]}, pool {str(p.get('pool'))[:20]} "
            f"(archfit run FILE --batch-file seqs.jsonl -d out/)"]

    def longest(self) -> int | None:
        return self.spec.max_len

    def summary(self) -> str:
        s = self.spec
        how = {"pack": f"packed rows ({s.method}, look-ahead {s.lookahead})", "buckets": "buckets (one sequence per row)",
               "dynamic": "dynamic lengths (one sequence per row at its exact length, one engine)"}[s.strategy]
        sizes = (f"{self.inner.low}..{self.inner.high}" if s.strategy == "dynamic" else ", ".join(map(str, s.sizes)))
        lines = [f"{how}: {self.rows} x {sizes} positions; outputs {', '.join(s.outputs)}"
                 + (f", pooled by {s.pool}" if s.pool else "")
                 + (f"; left out (one value per row): {', '.join(s.left_out)}" if s.left_out else "")]
        if s.measured:
            lines.append("  strategy chosen by measurement on lengths drawn from those seen: " + ", ".join(
                f"{k} {v:.1f} seq/s" + (" (chosen)" if k == s.strategy else "") for k, v in s.measured.items()))
        if self.checks:
            n, rows, worst = self.checks
            lines.append(f"  no cross-contamination: {n} sequences packed into {rows} row(s) equal the model run on "
                         f"each alone (worst max abs error {worst:.2e})")
        return "\n".join(lines)

    def page(self) -> dict:
        return self.inner.page()

    @property
    def rows(self) -> int:
        return self.inner.rows if isinstance(self.inner, DynamicModule) else self.inner.batch

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self.spec.strategy}, rows={self.rows}x{self.spec.sizes}"


# --- compile time ---------------------------------------------------------------------------
