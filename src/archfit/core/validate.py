"""Stage 5: compare the compiled module with eager PyTorch, on the example inputs, on one fresh
random input of the same shapes and dtypes, and on the user's validation set; name the partition
at fault when it fails. With a task gate and a validation set, the gate over the set decides: one
example's top-5 or one near-tie box is noise, not evidence."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch.utils import _pytree as pytree

from .accuracy import Accuracy, MetricCheck
from .capture import Captured
from .compile import CompiledGraph, record_partition_inputs
from .engines import partition_module
from ..errors import ValidationError, first_line

# Pass when max|got - want| <= atol + rtol * max|want|, per output. Relative to the output's
# largest magnitude, because elementwise relative error is meaningless near zero.
TOLERANCES = {
    "fp32": (1e-5, 1e-3),  # reordered fp32 sums (tiled matmuls, fused ops) stay well inside
    "bf16": (1e-3, 5e-2),  # bf16 keeps 8 mantissa bits (~0.4% per rounding), compounded by depth
    # reported only: int8 and fp8 are judged by a task gate on a validation set (pipeline refuses them without)
    "int8": (1e-2, 2e-1),
    "int8w": (1e-2, 2e-1),
    "fp8": (1e-2, 2e-1),
}


@dataclass(frozen=True)
class OutputCheck:
    output: str
    max_abs: float
    max_rel: float  # max_abs / max|reference|
    tolerance: float  # the bound max_abs had to stay under
    ok: bool
    nonfinite: str = ""  # NaN/Inf on one side only, said in words ("" when none)


@dataclass(frozen=True)
class InputCheck:
    label: str  # "example inputs" / "random inputs"
    outputs: tuple[OutputCheck, ...]

    @property
    def ok(self) -> bool:
        return all(o.ok for o in self.outputs)


@dataclass(frozen=True)
class Validation:
    precision: str
    atol: float
    rtol: float
    checks: tuple[InputCheck, ...]
    # a task gate (accuracy=...): what it measured per input set; when set, it decides pass/fail
    gate: str | None = None
    metrics: tuple[MetricCheck, ...] = ()
    # the label of the metric that decides (the validation set's), None: every metric does
    decided_by: str | None = None

    @property
    def ok(self) -> bool:
        if self.gate is not None:
            return all(m.ok for m in self.metrics if self.decided_by in (None, m.label))
        return all(c.ok for c in self.checks)

    @property
    def max_rel(self) -> float:
        return max((o.max_rel for c in self.checks for o in c.outputs), default=0.0)

    def gate_lines(self) -> list[str]:
        """What the task gate measured, a line per input set ([] without a gate)."""
        return [f"{self.gate} gate on the {m.label} ({self.precision}): {m.describe()}: {'PASS' if m.ok else 'FAIL'}"
                + (" (reported; the validation set decides)" if self.decided_by not in (None, m.label) else "")
                for m in self.metrics]


def random_like(inputs: Sequence[torch.Tensor], seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Fresh inputs shaped by the example's own structure, so they stay valid for the model:
    floats with the example's mean and spread; 0/1 masks whose rows keep a run of ones as long
    as the example's, shortened a little (never a row of zeros: mean pooling over it is 0/0);
    other integers (token ids, embedding indices) drawn per position along the last dim within
    that position's observed range across rows (columns of a recommender index different tables;
    a padded batch's pad columns stay pad), or the whole example's range for a single row."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for t in inputs:
        if t.dtype.is_floating_point:
            std = float(t.float().std()) if t.numel() > 1 else 1.0
            r = torch.randn(t.shape, generator=g) * (std or 1.0) + float(t.float().mean())
            out.append(r.to(t.dtype))
        elif t.dtype == torch.bool:
            out.append(torch.rand(t.shape, generator=g) < 0.5 if t.any() and not t.all() else t.clone())
        elif not t.numel() or t.dim() == 0:
            out.append(t.clone())
        elif _is_mask(t):
            out.append(_shorter_mask(t, g))
        else:
            rows = t.reshape(-1, t.shape[-1])
            if rows.shape[0] > 1:
                lo, hi = rows.min(dim=0).values, rows.max(dim=0).values
            else:
                lo, hi = rows.min().expand(rows.shape[-1]), rows.max().expand(rows.shape[-1])
            u = torch.rand(rows.shape, generator=g, dtype=torch.float64)
            drawn = lo + (u * (hi - lo + 1).double()).floor().to(t.dtype).clamp(max=(hi - lo))
            out.append(drawn.reshape(t.shape))
    return tuple(out)


def _is_mask(t: torch.Tensor) -> bool:
    """An attention mask: 0/1 values, each row a run of ones then zeros (or the reverse)."""
    if t.dim() < 1 or not bool(((t == 0) | (t == 1)).all()) or not bool(t.any()):
        return False
    rows = t.reshape(-1, t.shape[-1])
    steps = (rows[:, 1:] != rows[:, :-1]).sum(dim=1)
    return bool((steps <= 1).all())


def _shorter_mask(t: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    rows = t.reshape(-1, t.shape[-1]).clone()
    for row in rows:
        ones = row.nonzero().flatten()
        if len(ones) <= 1:
            continue
        cut = int(torch.randint(0, max(1, len(ones) // 8) + 1, (1,), generator=g))
        left_padded = bool(row[0] == 0)  # ones at the end: shorten from the left
        drop = ones[:cut] if left_padded else ones[len(ones) - cut:]
        row[drop] = 0
    return rows.reshape(t.shape)


def _compare(name: str, got, want, atol: float, rtol: float) -> OutputCheck:
    if not isinstance(want, torch.Tensor):
        ok = got == want
        return OutputCheck(name, 0.0 if ok else float("inf"), 0.0 if ok else float("inf"), 0.0, ok)
    if got.shape != want.shape:
        return OutputCheck(name, float("inf"), float("inf"), 0.0, False)
    if not want.dtype.is_floating_point:
        ok = bool(torch.equal(got.to(want.dtype), want))
        return OutputCheck(name, 0.0 if ok else float("inf"), 0.0 if ok else float("inf"), 0.0, ok)
    finite_got, finite_want = torch.isfinite(got), torch.isfinite(want)
    scale = float(want.double()[finite_want].abs().max()) if bool(finite_want.any()) else 0.0
    bound = atol + rtol * scale
    if not torch.equal(finite_got, finite_want):  # NaN/Inf on one side only: no error size says it
        extra = int((~finite_got & finite_want).sum())
        said = (f"NaN/Inf at {extra} position(s) where eager PyTorch is finite" if extra else
                f"finite values at {int((finite_got & ~finite_want).sum())} position(s) where eager PyTorch has NaN/Inf")
        return OutputCheck(name, float("inf"), float("inf"), bound, False, said)
    diff = (got.double() - want.double()).abs()
    diff[~finite_want] = 0.0  # NaN/Inf where eager has them: a match
    max_abs = float(diff.max()) if diff.numel() else 0.0
    return OutputCheck(name, max_abs, max_abs / scale if scale else max_abs, bound, max_abs <= bound)


def compare_outputs(names: Sequence[str], got: Sequence, want: Sequence, precision: str, *,
                    unordered: bool = False) -> tuple[OutputCheck, ...]:
    """Each compiled output against eager PyTorch's, within the precision's tolerance. The one
    comparison behind validation, padding safety and detector validation. unordered: compare
    each output's values as a multiset (detections whose scores tie within rounding may leave
    NMS in another order, which is not an error; another count is)."""
    atol, rtol = TOLERANCES[precision]
    if len(got) != len(want):
        return (OutputCheck(f"{len(got)} outputs (eager: {len(want)})", float("inf"), float("inf"), 0.0, False),)
    checks = []
    for name, g, w in zip(names, got, want):
        if unordered and isinstance(w, torch.Tensor) and isinstance(g, torch.Tensor) and g.shape == w.shape:
            g, w = g.flatten().sort().values, w.flatten().sort().values
        checks.append(_compare(name, g, w, atol, rtol))
    return tuple(checks)


def flat_outputs(out) -> list:
    return pytree.tree_flatten(out)[0]


def _partition_errors(compiled: CompiledGraph, flat_inputs: Sequence[torch.Tensor], atol: float, rtol: float):
    """Per-partition error: each engine against its eager subgraph on the boundary values it sees."""
    seen = record_partition_inputs(compiled.graph_module, len(compiled.references), flat_inputs)
    worst = []
    for i, ref in compiled.references.items():
        engine_mod = partition_module(compiled.graph_module, i)
        with torch.no_grad():
            got, want = engine_mod(*seen[i]), ref(*seen[i])
        checks = [_compare(f"partition {i} output {k}", g, w, atol, rtol) for k, (g, w) in enumerate(zip(got, want))]
        worst.append((max(c.max_rel for c in checks) if checks else 0.0, i, all(c.ok for c in checks)))
    return sorted(worst, reverse=True)


def check_gate(gate: Accuracy, got, want, label: str, precision: str, blame: Callable[[], str],
               raise_on_failure: bool = True, prefix: str = "") -> MetricCheck:
    """The task gate on one input set (model outputs as returned, before flattening). A failure
    raises its one line: the gate, the input set, by how much, and `blame()` (where it went wrong)."""
    metric = gate.check(got, want, label)
    if raise_on_failure and not metric.ok:
        fix = "use precision='fp32', " if precision != "fp32" else ""
        raise ValidationError(
            f"{prefix}the {gate.describe()} gate fails on the {label} ({precision}): {metric.shortfall()}"
            f"{gate.hint(got, want)}{blame()}; "
            f"{fix}loosen the gate's bounds if the task allows, or force ops to the CPU with force_cpu=[...]")
    return metric


def _run_both(eager: Callable, compiled_call: Callable, flat, in_spec, label: str):
    """(compiled outputs, eager outputs) on one flat input set."""
    args, kwargs = pytree.tree_unflatten(list(flat), in_spec)
    with torch.no_grad():
        try:
            want_out = eager(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - the model itself rejects generated inputs
            raise ValidationError(
                f"eager PyTorch fails on the {label} ({type(e).__name__}: {first_line(e, 120)}); the random "
                f"values may be invalid for this model: pass validation_inputs=... or validate=False"
            ) from None
        return compiled_call(*args, **kwargs), want_out


def _refuse_elementwise(check: InputCheck, precision: str, blame: str) -> None:
    bad = next(o for o in check.outputs if not o.ok)
    what = (f"has {bad.nonfinite}" if bad.nonfinite else
            f"differs from eager PyTorch: max abs error {bad.max_abs:.3e} > tolerance {bad.tolerance:.3e}")
    raise ValidationError(f"output {bad.output!r} {what} on the {check.label} ({precision}){blame}; force that "
                          f"partition's ops to the CPU with force_cpu=[...] or use precision='fp32'")


def validate(
    eager: Callable, compiled_call: Callable, captured: Captured, compiled: CompiledGraph, precision: str,
    raise_on_failure: bool = True, validation_set: Sequence[Sequence[torch.Tensor]] | None = None,
    accuracy: Accuracy | None = None,
) -> Validation:
    """The example and one random input, each alone, then the validation set (flat input sets,
    core/sets.py) as a whole: with a gate, the gate over the set decides."""
    atol, rtol = TOLERANCES[precision]
    checks, metrics = [], []
    decided_by = "validation set" if validation_set and accuracy is not None else None
    for label, flat in (("example inputs", captured.example_inputs), ("random inputs",
                                                                      random_like(captured.example_inputs))):
        got_out, want_out = _run_both(eager, compiled_call, flat, captured.in_spec, label)
        checks.append(InputCheck(label, compare_outputs(captured.output_names, flat_outputs(got_out),
                                                        flat_outputs(want_out), precision)))
        if accuracy is not None:  # the task's gate decides; the elementwise error is still reported
            metrics.append(check_gate(accuracy, got_out, want_out, label, precision,
                                      lambda: _blame(compiled, flat, atol, rtol),
                                      raise_on_failure and decided_by is None))
        elif raise_on_failure and not checks[-1].ok:
            _refuse_elementwise(checks[-1], precision, _blame(compiled, flat, atol, rtol))
    if validation_set:
        check, metric = _validate_set(eager, compiled_call, captured, compiled, precision, validation_set, accuracy,
                                      raise_on_failure)
        checks.append(check)
        metrics += [metric] if metric is not None else []
    return Validation(precision, atol, rtol, tuple(checks), accuracy.name if accuracy else None, tuple(metrics),
                      decided_by)


def _validate_set(eager, compiled_call, captured: Captured, compiled: CompiledGraph, precision: str, sets,
                  accuracy: Accuracy | None, raise_on_failure: bool) -> tuple[InputCheck, MetricCheck | None]:
    """The validation set: the gate over every input (which decides), and per output the worst
    elementwise error over the set (which decides without a gate, naming the input)."""
    atol, rtol = TOLERANCES[precision]
    label = f"validation set ({len(sets)} inputs)" if len(sets) > 1 else "validation inputs"
    pairs, worst = [], {}
    for i, flat in enumerate(sets):
        got_out, want_out = _run_both(eager, compiled_call, flat, captured.in_spec, f"validation input #{i}")
        pairs.append((got_out, want_out))
        outs = compare_outputs(captured.output_names, flat_outputs(got_out), flat_outputs(want_out), precision)
        if accuracy is None and raise_on_failure and not all(o.ok for o in outs):
            _refuse_elementwise(InputCheck(f"validation input #{i}", outs), precision,
                                _blame(compiled, flat, atol, rtol))
        for o in outs:  # per output, the first failure, else the largest error over the set
            held = worst.get(o.output)
            if held is None or (held.ok and (not o.ok or o.max_rel > held.max_rel)):
                worst[o.output] = o
    check = InputCheck(label, tuple(worst.values()))
    if accuracy is None:
        return check, None
    metric = accuracy.check_set(pairs, "validation set")
    if raise_on_failure and not metric.ok:
        fix = "use precision='fp32', " if precision != "fp32" else ""
        raise ValidationError(f"the {accuracy.describe()} gate fails on the validation set ({precision}): "
                              f"{metric.shortfall()} over {metric.size} inputs (worst: "
                              f"{', '.join(f'#{i}' for i, _ in metric.worst) or '-'}); {fix}loosen the gate's bounds "
                              f"if the task allows, or force ops to the CPU with force_cpu=[...]")
    return check, metric


def _blame(compiled: CompiledGraph, flat, atol: float, rtol: float) -> str:
    if not compiled.references:
        return ""
    rel, idx, _ok = _partition_errors(compiled, flat, atol, rtol)[0]
    return f"; partition {idx} ({compiled.plan.target}) is at fault (max rel error {rel:.2e})"
