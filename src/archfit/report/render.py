"""Terminal rendering of fit reports (rich tables, plain text when not a terminal)."""
from __future__ import annotations

import io
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from .fit import FitReport


def human_flops(f: float) -> str:
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if f >= scale:
            return f"{f / scale:.2f} {unit}FLOP"
    return f"{f:.0f} FLOP"


def human_bytes(b: float) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if b >= scale:
            return f"{b / scale:.1f} {unit}"
    return f"{b:.0f} B"


def _shapes(bs) -> str:
    return ", ".join(f"{b.name}{list(b.shape)}:{b.dtype}" for b in bs[:4]) + (f", +{len(bs) - 4}" if len(bs) > 4 else "")


def render_report(r: "FitReport", width: int = 120) -> str:
    buf = io.StringIO()
    con = Console(file=buf, width=width, force_terminal=False, color_system=None, markup=False, highlight=False)
    emu = " [accelerator profile; execution emulated on this CPU]" if r.emulated else ""
    con.print(f"archfit fit report: {r.model} on {r.target}{emu} ({r.precision})")
    con.print(f"verdict: {r.verdict.upper()} ({r.verdict_reason})")
    con.print(
        f"ops on target: {r.supported_ops}/{r.total_ops} ({r.op_share:.1%}) by count, "
        f"{human_flops(r.supported_flops)} / {human_flops(r.total_flops)} ({r.flop_share:.1%}) by FLOPs"
    )
    for section in (_partitions, _alternatives, _source_ops, _fallback, _validation):
        table = section(r)
        if table is not None:
            con.print(table)
    for line in _closing_lines(r):
        con.print(line)
    return buf.getvalue()


def _table(title: str, columns: tuple[str, ...]) -> Table:
    t = Table(title=title, title_justify="left")
    for col in columns:
        t.add_column(col)
    return t


def _partitions(r: "FitReport") -> Table | None:
    if not r.partitions:
        return None
    t = _table("target partitions", ("#", "ops", "compute", "FLOPs", "inputs", "outputs", "boundary"))
    mixed = any(tm.target for tm in r.timings.values())
    if r.timings:
        t.add_column("alone ms")
        t.add_column("in model ms")
        t.caption = ("ms: on the target / in PyTorch, for the partition alone and for the whole model; "
                     "a partition stays on the target only if the whole model is faster with it there")
    if mixed:
        t.add_column("runs on")
        t.caption = (t.caption or "") + ("; runs on: the target per_partition kept, with the whole model's ms "
                                         "with this partition on each target")
    for p in r.partitions:
        row = [str(p.index), str(len(p.nodes)), str(p.compute_ops), human_flops(p.flops),
               _shapes(p.inputs), _shapes(p.outputs), human_bytes(p.boundary_bytes)]
        if r.timings and p.index in r.timings:
            tm = r.timings[p.index]
            in_model = (f"{tm.model_ms_on_target:.3f} / {tm.model_ms_in_pytorch:.3f}"
                        if tm.model_ms_on_target is not None else "-")
            row += [f"{tm.compiled_ms:.3f} / {tm.eager_ms:.3f}", in_model]
            if mixed:
                row.append(f"{tm.target or r.target} ({tm.measured})" if tm.measured else (tm.target or r.target))
        elif r.timings:
            row += ["-", "-"] + (["-"] if mixed else [])
        t.add_row(*row)
    return t


def _alternatives(r: "FitReport") -> Table | None:
    if not r.alternatives:
        return None
    t = _table("chosen by measurement on this CPU (median ms on the example inputs)", ("target", "precision", "ms", ""))
    for a in r.alternatives:
        t.add_row(a.target, a.precision, f"{a.ms:.3f}" if a.ms is not None else "-",
                  "chosen" if a.chosen else (a.why or ""))
    return t


def _source_ops(r: "FitReport") -> Table | None:
    if not r.source_ops:
        return None
    framework = r.source_ops[0].op.split(" ", 1)[0]
    t = _table(f"by {framework} op (the model's own ops; a node counts as on target when all of it is)",
               ("op", "nodes", "on target", "FLOPs", "share of FLOPs"))
    for s in r.source_ops:
        share = s.flops / r.total_flops if r.total_flops else 0.0
        t.add_row(s.op, str(s.count), f"{s.on_target}/{s.count}", human_flops(s.flops), f"{share:.1%}")
    return t


def _fallback(r: "FitReport") -> Table | None:
    if not r.fallback:
        return None
    t = _table("runs on the CPU (PyTorch)", ("op", "count", "FLOPs", "reason", "where"))
    for g in r.fallback:
        where = "; ".join(g.sources[:3]) + (f" (+{len(g.sources) - 3})" if len(g.sources) > 3 else "")
        t.add_row(g.op, str(g.count), human_flops(g.flops), f"{g.reason}: {g.detail}", where or "-")
    return t


def _validation(r: "FitReport") -> Table | None:
    v = r.validation
    if v is None:
        return None
    t = _table(f"compiled vs eager PyTorch ({'PASS' if v.ok else 'FAIL'}; tolerance: atol {v.atol:g} + rtol "
               f"{v.rtol:g} x max|eager|)", ("inputs", "output", "max abs err", "max rel err", "ok"))
    for c in v.checks:
        for o in c.outputs:
            t.add_row(c.label, o.output, f"{o.max_abs:.2e}", f"{o.max_rel:.2e}", "yes" if o.ok else "NO")
    if v.gate is not None:
        t.caption = "the task gate below decides; the elementwise error is shown for reference"
    return t


def _closing_lines(r: "FitReport") -> list[str]:
    """The task gate's metrics, the Inferentia estimate, the emulation note, the compile time."""
    lines = list(r.validation.gate_lines()) if r.validation is not None else []
    if r.quantization is not None:
        lines += r.quantization.lines()
    if r.estimate is not None:
        e = r.estimate
        lines.append(
            f"ESTIMATED latency on {e.chip} (roofline, one NeuronCore, utilisation {e.utilisation:.2f}, "
            f"{e.call_overhead_ms:.2f} ms per device call; not a measurement): {e.total_ms:.2f} ms = device "
            f"{e.device_ms:.2f} + host<->device transfer {e.transfer_ms:.3f} + CPU fallback {e.host_ms:.2f} "
            f"(measured on this machine)"
        )
    if r.emulated and r.validation is not None:
        lines.append(f"note: {r.target} partitions ran EMULATED on this machine's CPU with {r.target}'s numerics; "
                     f"accuracy and partitioning are real, speed is not")
    if r.compile_seconds is not None:
        hits = sum(t.cached for t in r.timings.values())
        cached = f" ({hits}/{len(r.timings)} engines from the compile cache)" if hits else ""
        lines.append(f"compile time: {r.compile_seconds:.1f} s{cached}")
    return lines
