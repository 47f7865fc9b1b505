"""Compiling a packed encoder (trace(..., packing=...)): which inputs the model takes, the
cross-contamination check, row lengths chosen from the lengths seen, and for strategy="auto"
the candidates measured against each other. The packed module itself is in packed.py."""
from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable, Mapping

import numpy as np
import torch

from ..core.module import ArchfitModule
from ..core.timing import fastest
from ..core.validate import compare_outputs
from ..errors import ArchfitError, ModelError, ValidationError, first_line
from .choose import Buckets, choose_buckets
from .dispatch import BucketedModule
from .dynamic import trace_dynamic
from .packed import (ROW_INPUTS, PackedModule, PackedRows, Packing, PackSpec, as_sequence, build_rows, log,
                     named_outputs, run_packed)
from .packing import pack, pack_stream
from .trace import trace_buckets


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


def _measure(modules: dict[str, "PackedModule"], packing: Packing, example: dict, seconds: float) -> tuple[str, dict]:
    """The fastest candidate on lengths drawn from those seen (fixed seed), timed as every
    compile-time choice is (core.timing.fastest), and each one's sequences per second."""
    g = np.random.default_rng(0)
    lengths = g.choice(_lengths_seen(packing), size=min(packing.lookahead, 128))
    tokens = example["input_ids"].reshape(-1)
    seqs = [tokens[torch.from_numpy(g.integers(0, tokens.numel(), int(n)))] for n in lengths]
    chosen = fastest({k: (lambda m=m: m.run(seqs)) for k, m in modules.items()}, seconds)
    return chosen.best, {k: len(seqs) / (ms / 1e3) for k, ms in chosen.ms.items()}


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


def _packable(model: torch.nn.Module, example_inputs: Any, packing: Packing, target) -> tuple[dict, bool]:
    """The example as tensors and whether the model takes token types, or one line saying why
    `model` cannot be packed at all."""
    name, takes = type(model).__name__, _takes(model)
    if "position_ids" not in takes:
        raise ModelError(f"{name} cannot be packed: its forward() takes no position_ids, so positions cannot restart "
                         f"at each packed sequence; use buckets instead")
    if "attention_mask" not in takes:
        raise ModelError(f"{name} cannot be packed: its forward() takes no attention_mask; use buckets instead")
    if not isinstance(example_inputs, Mapping) or "input_ids" not in example_inputs:
        raise ArchfitError("packing: give the example inputs as a dict with 'input_ids' (and 'attention_mask', "
                           "'token_type_ids' where the model takes them)")
    if packing.strategy == "dynamic" and target.compile_dynamic is None:
        raise ArchfitError(f"dynamic lengths: target {target.name!r} compiles fixed shapes only; use strategy='pack' "
                           f"or 'buckets', or a target with bounded dynamic shapes (openvino)")
    example = {k: torch.as_tensor(v) for k, v in example_inputs.items()}
    return example, "token_type_ids" in takes and "token_type_ids" in example


def _kept_outputs(model: torch.nn.Module, example: dict, packing: Packing, token_types: bool):
    """(outputs kept, outputs left out): the model's outputs with one value per token, or those
    named; an output with one value per row (it would mix a row's sequences) refused when named."""
    name = type(model).__name__
    ids = example["input_ids"].reshape(-1)
    probe = ids.repeat(-(-7 // ids.numel()))[:7]  # 7 tokens: a length no other dim of a tiny model has
    sample = _alone(model, as_sequence({"input_ids": probe}, 0, token_types), token_types)
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
    if left_out:
        log.warning(f"packing {name}: left out {', '.join(left_out)} (one value per row mixes the sequences packed "
                    f"into it); kept {', '.join(keep)}")
    return keep, left_out


def _candidate_specs(model: torch.nn.Module, example: dict, packing: Packing, token_types: bool) -> dict[str, PackSpec]:
    """The static-shape strategies to compile (each with its row lengths), by strategy name."""
    keep, left_out = _kept_outputs(model, example, packing, token_types)
    offset = packing.position_offset if packing.position_offset is not None else _position_offset(model)
    static = {"pack": {"pack": packing.max_per_row}, "buckets": {"buckets": 1}, "dynamic": {"pack": packing.max_per_row},
              "auto": {"pack": packing.max_per_row, "buckets": 1}}[packing.strategy]
    return {k: PackSpec(_row_sizes(packing, n) if packing.strategy != "dynamic" else (packing.max_len,), keep,
                        token_types, offset, packing.pool, packing.lookahead, n, packing.method, left_out, k)
            for k, n in static.items()}


def _check_eager(model: torch.nn.Module, wrapper: PackedRows, seqs: list, spec: PackSpec) -> None:
    """Before any compile: can it be packed at all (the cross-contamination check in eager PyTorch)?"""
    def eager(**rows):
        with torch.no_grad():
            return wrapper(**rows)

    try:
        check_contamination(lambda batch: run_packed(batch, spec, eager), model, seqs, spec, "fp32", "eager")
    except (ArchfitError, KeyboardInterrupt):
        raise
    except Exception as e:  # noqa: BLE001 - the model refusing packed rows, named
        raise ModelError(f"{type(model).__name__} cannot be packed: it fails in eager PyTorch on packed rows with a "
                         f"4-D attention mask and position ids ({type(e).__name__}: {first_line(e, 150)}); use "
                         f"buckets instead") from e


def _compile_candidates(trace_one, wrapper: PackedRows, rows_example: dict, specs: dict[str, PackSpec],
                        packing: Packing, target, precision: str, progress) -> dict[str, PackedModule]:
    """Each strategy compiled: static row lengths as buckets with a dynamic batch of rows (strategies
    with the same row lengths share their engines), and one dynamic-length engine where asked and possible."""
    modules, compiled = {}, {}
    for k, candidate in specs.items():
        if candidate.sizes not in compiled:
            # bucket padding gets a sequence id of its own (-1): never the group of a row's own padding (0)
            buckets = Buckets({n: 1 for n in ROW_INPUTS}, sizes=candidate.sizes, pad_values={"sequence_ids": -1})
            compiled[candidate.sizes] = trace_buckets(lambda inputs: trace_one(wrapper, inputs), wrapper, rows_example,
                                                      buckets, True, precision, check_padding=len(candidate.sizes) > 1,
                                                      progress=progress, batch_sizes=packing.row_counts)
        modules[k] = PackedModule(compiled[candidate.sizes], candidate)
    if packing.strategy not in ("dynamic", "auto"):
        return modules
    why_not = _why_not_dynamic(modules["pack"].inner, target)
    if why_not is not None:
        if packing.strategy == "dynamic":
            raise ArchfitError(f"dynamic lengths: {why_not}; use strategy='pack' or 'buckets'")
        return modules
    max_len = packing.max_len
    dyn_spec = dataclasses.replace(specs["pack"], sizes=(max_len,), max_per_row=1, strategy="dynamic")
    if progress is not None:
        progress(f"dynamic lengths 2..{max_len}")
    inner = trace_dynamic(wrapper, {k: v[:, :max_len] for k, v in rows_example.items()}, target, precision, max_len,
                          {"sequence_ids": -1}, modules["pack"].report)
    return ({} if packing.strategy == "dynamic" else modules) | {"dynamic": PackedModule(inner, dyn_spec)}


def trace_packed(trace_one: Callable[[torch.nn.Module, Any], ArchfitModule], model: torch.nn.Module,
                 example_inputs: Any, packing: Packing, target, precision: str, progress=None) -> PackedModule:
    """Compile `model` over packed rows for `target` (trace_one(module, inputs): archfit.trace's
    static path on it): every strategy asked for, the fastest kept, checked per sequence."""
    example, token_types = _packable(model, example_inputs, packing, target)
    specs = _candidate_specs(model, example, packing, token_types)
    spec = next(iter(specs.values()))
    wrapper = PackedRows(model, spec.outputs, token_types).eval()
    seqs = _check_sequences(example, spec.max_len, packing.rows)
    _check_eager(model, wrapper, seqs, spec)
    packs = pack([s["input_ids"].shape[0] for s in seqs], spec.max_len)
    rows_example = build_rows(seqs, [packs[i % len(packs)] for i in range(packing.rows)], spec.max_len,
                              spec.position_offset)
    modules = _compile_candidates(trace_one, wrapper, rows_example, specs, packing, target, precision, progress)
    chosen, measured = next(iter(modules)), None
    if len(modules) > 1:
        if progress is not None:
            progress(f"measuring {', '.join(modules)} on lengths drawn from those seen")
        chosen, measured = _measure(modules, packing, example, packing.measure_seconds)
    spec = dataclasses.replace(modules[chosen].spec, strategy=chosen, measured=measured)
    inner = modules[chosen].inner
    worst = check_contamination(PackedModule(inner, spec).run, model, seqs, spec, precision, f"on {inner.target}")
    rows = len(pack([len(s["input_ids"]) for s in seqs], spec.max_len, spec.max_per_row))
    return PackedModule(inner, spec, checks=(len(seqs), rows, worst))


__all__ = ["PackSpec", "PackedModule", "PackedRows", "Packing", "run_packed", "trace_packed"]
