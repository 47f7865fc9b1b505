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

import dataclasses
import inspect
import logging
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch.utils import _pytree as pytree

from ..core.capture import output_names
from ..core.module import ArchfitModule
from ..core.validate import compare_outputs
from ..errors import ArchfitError, InputError, ModelError, ValidationError, first_line
from .choose import Buckets, choose_buckets
from .dispatch import BucketedModule
from .dynamic import DynamicModule, trace_dynamic
from .packing import Pack, pack, pack_stream
from .trace import trace_buckets

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

    def __post_init__(self):
        if self.max_len < 2 or self.rows < 1 or self.lookahead < 1 or self.max_sizes < 1:
            raise ValueError("Packing needs max_len >= 2, rows >= 1, lookahead >= 1 and max_sizes >= 1")
        if self.pool is not None and self.pool not in POOLS:
            raise ValueError(f"Packing pool={self.pool!r}: choose one of {', '.join(POOLS)}, or None")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"Packing strategy={self.strategy!r}: choose one of {', '.join(STRATEGIES)}")
        if self.strategy == "auto" and self.sample is None and self.histogram is None:
            raise ValueError("Packing strategy='auto' measures on the lengths seen: give sample= or histogram=")
        if self.sizes is not None and (not self.sizes or min(self.sizes) < 1 or max(self.sizes) != self.max_len):
            raise ValueError(f"Packing sizes {self.sizes} must be positive and end at max_len {self.max_len}")


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


def _sequence(item: Any, index: int, token_types: bool) -> dict[str, torch.Tensor]:
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


def run_packed(sequences: Sequence[Any], spec: PackSpec, call: Callable[..., dict]) -> list[dict[str, torch.Tensor]]:
    """Pack, run each group of rows through call(**rows) at the smallest row length that holds
    them, and cut every sequence's outputs back out, in the order given."""
    seqs = [_sequence(s, i, spec.token_types) for i, s in enumerate(sequences)]
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
            _unpack(out, seqs, packs, spec.pool, spec.outputs[0], results)
    return [results[i] for i in range(len(seqs))]


class PackedModule(ArchfitModule):
    """Returned by `archfit.trace(..., packing=...)`: `run(sequences)` packs a list of
    variable-length sequences into compiled rows and returns, per sequence in order, a dict of
    its outputs as if the model had run on it alone ([1, n, ...] token outputs, [1, ...] pooled);
    `map(iterable)` streams a corpus; calling it with a padded batch ([B, n] ids and a 2-D mask)
    returns the same outputs padded back to [B, n, ...] (zeros at padding)."""

    kind = "packed"

    def __init__(self, inner: BucketedModule | DynamicModule, spec: PackSpec, manifest: dict | None = None, checks=None):
        super().__init__(inner.target, inner.precision, inner.emulated, inner.report, manifest)
        self.inner = inner
        self.spec = spec
        self.checks = checks  # (sequences, rows, worst abs error) of the compile-time cross-contamination check

    def run(self, sequences: Sequence[Any]) -> list[dict[str, torch.Tensor]]:
        return run_packed(sequences, self.spec, self.inner)

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
        per = self.run(items)
        out = {}
        for k in per[0]:
            tok = per[0][k].dim() >= 2 and k != "pooled"
            shape = (ids.shape[0], ids.shape[1], *per[0][k].shape[2:]) if tok else (ids.shape[0], *per[0][k].shape[1:])
            full = torch.zeros(shape, dtype=per[0][k].dtype)
            for b, res in enumerate(per):
                if tok:
                    full[b, :res[k].shape[1]] = res[k][0]
                else:
                    full[b] = res[k][0]
            out[k] = full
        return out

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


def _takes(model: torch.nn.Module) -> set[str]:
    try:
        return set(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):
        return set()


def _position_offset(model: torch.nn.Module) -> int:
    """First position id the model gives a sequence by default: 0, or after the padding index of
    a position embedding that has one (RoBERTa and XLM-R count positions from pad_token_id + 1)."""
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Embedding) and "position" in name and m.padding_idx is not None:
            return int(m.padding_idx) + 1
    return 0


def _check_sequences(example: dict, max_len: int, rows: int) -> list[dict[str, torch.Tensor]]:
    """Sequences for the cross-contamination check, from the example's own tokens: lengths that put
    two to four sequences in each of `rows` + 1 rows, the first starting each row at offset 0."""
    ids = example["input_ids"]
    ids = ids[0] if ids.dim() == 2 else ids
    mask = example.get("attention_mask")
    real = int(mask.reshape(-1, mask.shape[-1])[0].sum()) if mask is not None else ids.shape[0]
    tokens = ids[:max(real, 1)]
    types = example.get("token_type_ids")
    g = torch.Generator().manual_seed(0)
    lengths = []
    for _ in range(rows + 1):
        left = max_len
        for part in (2, 3, 5):
            n = max(1, left // part + int(torch.randint(0, 3, (1,), generator=g)))
            lengths.append(min(n, left))
            left -= lengths[-1]
            if left <= 1:
                break
    seqs = []
    for n in lengths:
        idx = torch.randint(0, tokens.shape[0], (n,), generator=g)
        idx[0] = 0  # each keeps the example's first token ([CLS]/<s>) in front
        s = {"input_ids": tokens[idx]}
        if types is not None:  # two segments, as a question/context pair, where the example has two
            s["token_type_ids"] = (torch.arange(n) >= n // 2).long() * int(types.max() > 0)
        seqs.append(s)
    return seqs


def _alone(model, s: dict, token_types: bool) -> dict[str, torch.Tensor]:
    extra = {"token_type_ids": s["token_type_ids"][None]} if token_types and "token_type_ids" in s else {}
    with torch.no_grad():
        out = model(input_ids=s["input_ids"][None], attention_mask=torch.ones(1, s["input_ids"].shape[0],
                                                                              dtype=torch.long), **extra)
    return named_outputs(out)


def check_contamination(run: Callable[[list], list[dict]], model, seqs: list[dict], spec: PackSpec, precision: str,
                        what: str) -> float:
    """Every sequence's packed outputs against the model on that sequence alone; the worst error."""
    got = run(seqs)
    worst = 0.0
    for i, (s, res) in enumerate(zip(seqs, got)):
        want = _alone(model, s, spec.token_types)
        names = [k for k in spec.outputs]
        wants = [want[k] for k in names]
        if spec.pool:
            names.append("pooled")
            w = want[spec.outputs[0]]
            wants.append(w.mean(dim=1) if spec.pool == "mean" else w[:, 0])
        for c in compare_outputs(names, [res[k] for k in names], wants, precision):
            if not c.ok:
                n = s["input_ids"].shape[0]
                message = (f"output {c.output!r} of sequence #{i} ({n} tokens, packed beside others) differs from the "
                           f"model run on that sequence alone (max abs error {c.max_abs:.3e} > {c.tolerance:.3e})")
                if what == "eager":
                    raise ModelError(f"{type(model).__name__} cannot be packed: {message}: it mixes positions across "
                                     f"sequences (a 2-D-only attention mask, positions it makes itself, or an output "
                                     f"over the whole row); use buckets instead")
                raise ValidationError(f"packed {what}: {message}")
            worst = max(worst, c.max_abs)
    return worst


def _lengths_seen(packing: Packing) -> np.ndarray | None:
    from .packing import lengths_from_histogram

    if packing.histogram is not None:
        return np.minimum(lengths_from_histogram(packing.histogram), packing.max_len)
    if packing.sample is not None:
        return np.minimum(np.asarray(packing.sample, dtype=np.int64), packing.max_len)
    return None


def _row_sizes(packing: Packing, per_row: int | None) -> tuple[int, ...]:
    """Row lengths to compile: given, or chosen from the lengths seen (per_row=1: as buckets of
    the lengths themselves; else from how full the packed rows come out)."""
    if packing.sizes is not None:
        return tuple(sorted(set(packing.sizes)))
    lengths = _lengths_seen(packing)
    if lengths is None or packing.max_sizes == 1:
        return (packing.max_len,)
    if per_row != 1:
        packs = [p for w in pack_stream(lengths, packing.max_len, packing.lookahead, per_row, packing.method) for p in w]
        lengths = np.asarray([p.used for p in packs])
    used = np.bincount(lengths, minlength=packing.max_len + 1)[1:]
    # cost linear in positions: BERT-size encoders at <= 512 tokens spend most FLOPs in per-token layers
    return choose_buckets(used, packing.max_sizes, start=1, max_length=packing.max_len).boundaries


def _measure(modules: dict[str, "PackedModule"], packing: Packing, example: dict, seconds: float) -> dict[str, float]:
    """Sequences per second of each candidate on lengths drawn from those seen (fixed seed), the
    candidates interleaved, best of the rounds that fit in about `seconds` each."""
    g = np.random.default_rng(0)
    lengths = g.choice(_lengths_seen(packing), size=min(packing.lookahead, 128))
    tokens = example["input_ids"].reshape(-1)
    seqs = [tokens[torch.from_numpy(g.integers(0, tokens.numel(), int(n)))] for n in lengths]
    best = {k: float("inf") for k in modules}
    spent = 0.0
    for m in modules.values():
        m.run(seqs[:8])  # warm every row length's engine
    while spent < seconds * len(modules) or any(v == float("inf") for v in best.values()):
        for k, m in modules.items():
            t0 = time.perf_counter()
            m.run(seqs)
            took = time.perf_counter() - t0
            best[k], spent = min(best[k], took), spent + took
    return {k: len(seqs) / v for k, v in best.items()}


def _why_not_dynamic(inner: BucketedModule, target) -> str | None:
    """None when one dynamic-length engine can run the whole model on `target`, else why not."""
    if target.compile_dynamic is None:
        return f"target {target.name!r} compiles fixed shapes only"
    report = inner.report
    if report is None or len(report.partitions) != 1 or report.supported_ops != report.total_ops:
        cpu = report.total_ops - report.supported_ops if report is not None else "?"
        return (f"the model does not run whole on {target.name} ({len(report.partitions) if report else '?'} "
                f"partition(s), {cpu} op(s) on the CPU), and one engine must take every length")
    return None


def trace_packed(trace_one: Callable[[torch.nn.Module, Any], ArchfitModule], model: torch.nn.Module,
                 example_inputs: Any, packing: Packing, target, precision: str, progress=None) -> PackedModule:
    """Compile `model` over packed rows for `target` (trace_one(module, inputs): archfit.trace's
    static path on it)."""
    name = type(model).__name__
    takes = _takes(model)
    if "position_ids" not in takes:
        raise ModelError(f"{name} cannot be packed: its forward() takes no position_ids, so positions cannot restart "
                         f"at each packed sequence; use buckets instead")
    if "attention_mask" not in takes:
        raise ModelError(f"{name} cannot be packed: its forward() takes no attention_mask; use buckets instead")
    if not isinstance(example_inputs, Mapping) or "input_ids" not in example_inputs:
        raise ArchfitError("packing: give the example inputs as a dict with 'input_ids' (and 'attention_mask', "
                           "'token_type_ids' where the model takes them)")
    example = {k: torch.as_tensor(v) for k, v in example_inputs.items()}
    token_types = "token_type_ids" in takes and "token_type_ids" in example
    if packing.strategy == "dynamic" and target.compile_dynamic is None:
        raise ArchfitError(f"dynamic lengths: target {target.name!r} compiles fixed shapes only; use strategy='pack' "
                           f"or 'buckets', or a target with bounded dynamic shapes (openvino)")
    ids = example["input_ids"].reshape(-1)
    probe = ids.repeat(-(-7 // ids.numel()))[:7]  # 7 tokens: a length no other dim of a tiny model has
    sample = _alone(model, _sequence({"input_ids": probe}, 0, token_types), token_types)
    per_token = [k for k, v in sample.items() if v.dim() >= 2 and v.shape[1] == 7]
    keep = tuple(packing.outputs) if packing.outputs is not None else tuple(per_token)
    missing = [k for k in keep if k not in sample]
    if missing:
        raise ArchfitError(f"packing: the model has no output {missing[0]!r}; its outputs are {', '.join(sample)}")
    per_row = [k for k in keep if k not in per_token]
    if per_row or not keep:
        raise ModelError(f"{name}: output {(per_row or list(sample))[0]!r} has one value per row, not per token, so it "
                         f"would mix the sequences packed into a row; keep the token outputs "
                         f"({', '.join(map(repr, per_token)) or 'none'}) and pool per sequence with pool='first' or "
                         f"'mean'")
    left_out = tuple(k for k in sample if k not in keep)
    offset = packing.position_offset if packing.position_offset is not None else _position_offset(model)
    if left_out:
        log.warning(f"packing {name}: left out {', '.join(left_out)} (one value per row mixes the sequences packed "
                    f"into it); kept {', '.join(keep)}")
    static = {"pack": {"pack": packing.max_per_row}, "buckets": {"buckets": 1}, "dynamic": {"pack": packing.max_per_row},
              "auto": {"pack": packing.max_per_row, "buckets": 1}}[packing.strategy]
    specs = {k: PackSpec(_row_sizes(packing, n) if packing.strategy != "dynamic" else (packing.max_len,), keep,
                         token_types, offset, packing.pool, packing.lookahead, n, packing.method, left_out, k)
             for k, n in static.items()}
    spec = next(iter(specs.values()))
    wrapper = PackedRows(model, keep, token_types).eval()
    seqs = _check_sequences(example, spec.max_len, packing.rows)

    def eager(**rows):
        with torch.no_grad():
            return wrapper(**rows)

    try:  # before any compile: can it be packed at all?
        check_contamination(lambda batch: run_packed(batch, spec, eager), model, seqs, spec, "fp32", "eager")
    except (ArchfitError, KeyboardInterrupt):
        raise
    except Exception as e:  # noqa: BLE001 - the model refusing packed rows, named
        raise ModelError(f"{name} cannot be packed: it fails in eager PyTorch on packed rows with a 4-D attention "
                         f"mask and position ids ({type(e).__name__}: {first_line(e, 150)}); use buckets "
                         f"instead") from e
    packs = pack([s["input_ids"].shape[0] for s in seqs], spec.max_len)
    rows_example = build_rows(seqs, [packs[i % len(packs)] for i in range(packing.rows)], spec.max_len, offset)
    modules, compiled = {}, {}
    for k, candidate in specs.items():
        if candidate.sizes not in compiled:  # candidates with the same row lengths share their engines
            # bucket padding gets a sequence id of its own (-1): never the group of a row's own padding (0)
            buckets = Buckets({n: 1 for n in ROW_INPUTS}, sizes=candidate.sizes, pad_values={"sequence_ids": -1})
            compiled[candidate.sizes] = trace_buckets(lambda inputs: trace_one(wrapper, inputs), wrapper, rows_example,
                                                      buckets, True, precision, check_padding=len(candidate.sizes) > 1,
                                                      progress=progress)
        modules[k] = PackedModule(compiled[candidate.sizes], candidate)
    if packing.strategy in ("dynamic", "auto"):
        fits = _why_not_dynamic(modules["pack"].inner, target)
        if fits is None:
            dyn_spec = dataclasses.replace(specs["pack"], sizes=(spec.max_len,), max_per_row=1, strategy="dynamic")
            if progress is not None:
                progress(f"dynamic lengths 2..{spec.max_len}")
            inner = trace_dynamic(wrapper, {k: v[:, :spec.max_len] for k, v in rows_example.items()},
                                  target, precision, spec.max_len, {"sequence_ids": -1},
                                  modules["pack"].report)
            if packing.strategy == "dynamic":
                modules = {}
            modules["dynamic"] = PackedModule(inner, dyn_spec)
        elif packing.strategy == "dynamic":
            raise ArchfitError(f"dynamic lengths: {fits}; use strategy='pack' or 'buckets'")
    measured = None
    if len(modules) > 1:
        if progress is not None:
            progress(f"measuring {', '.join(modules)} on lengths drawn from those seen")
        measured = _measure(modules, packing, example, packing.measure_seconds)
    chosen = max(modules, key=lambda k: measured[k]) if measured else next(iter(modules))
    spec = dataclasses.replace(modules[chosen].spec, strategy=chosen, measured=measured)
    inner = modules[chosen].inner
    module = PackedModule(inner, spec)
    worst = check_contamination(module.run, model, seqs, spec, precision, f"on {inner.target}")
    return PackedModule(inner, spec, checks=(len(seqs), len(pack([len(s["input_ids"]) for s in seqs], spec.max_len,
                                                                   spec.max_per_row)), worst))


__all__ = ["PackSpec", "PackedModule", "PackedRows", "Packing", "run_packed", "trace_packed"]
