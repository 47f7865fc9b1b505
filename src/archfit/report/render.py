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
    if r.partitions:
        t = Table(title="target partitions", title_justify="left")
        for col in ("#", "ops", "compute", "FLOPs", "inputs", "outputs", "boundary"):
            t.add_column(col)
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
        con.print(t)
    if r.alternatives:
        t = Table(title="chosen by measurement on this CPU (median ms on the example inputs)", title_justify="left")
        for col in ("target", "precision", "ms", ""):
            t.add_column(col)
        for a in r.alternatives:
            t.add_row(a.target, a.precision, f"{a.ms:.3f}" if a.ms is not None else "-",
                      "chosen" if a.chosen else (a.why or ""))
        con.print(t)
    if r.source_ops:
        framework = r.source_ops[0].op.split(" ", 1)[0]
        t = Table(title=f"by {framework} op (the model's own ops; a node counts as on target when all of it is)",
                  title_justify="left")
        for col in ("op", "nodes", "on target", "FLOPs", "share of FLOPs"):
            t.add_column(col)
        for s in r.source_ops:
            share = s.flops / r.total_flops if r.total_flops else 0.0
            t.add_row(s.op, str(s.count), f"{s.on_target}/{s.count}", human_flops(s.flops), f"{share:.1%}")
        con.print(t)
    if r.fallback:
        t = Table(title="runs on the CPU (PyTorch)", title_justify="left")
        for col in ("op", "count", "FLOPs", "reason", "where"):
            t.add_column(col)
        for g in r.fallback:
            where = "; ".join(g.sources[:3]) + (f" (+{len(g.sources) - 3})" if len(g.sources) > 3 else "")
            t.add_row(g.op, str(g.count), human_flops(g.flops), f"{g.reason}: {g.detail}", where or "-")
        con.print(t)
    if r.validation is not None:
        v = r.validation
        t = Table(title=f"compiled vs eager PyTorch ({'PASS' if v.ok else 'FAIL'}; "
                        f"tolerance: atol {v.atol:g} + rtol {v.rtol:g} x max|eager|)", title_justify="left")
        for col in ("inputs", "output", "max abs err", "max rel err", "ok"):
            t.add_column(col)
        for c in v.checks:
            for o in c.outputs:
                t.add_row(c.label, o.output, f"{o.max_abs:.2e}", f"{o.max_rel:.2e}", "yes" if o.ok else "NO")
        if v.gate is not None:
            t.caption = "the task gate below decides; the elementwise error is shown for reference"
        con.print(t)
        for line in v.gate_lines():
            con.print(line)
    if r.estimate is not None:
        e = r.estimate
        con.print(
            f"ESTIMATED latency on {e.chip} (roofline, one NeuronCore, utilisation {e.utilisation:.2f}, "
            f"{e.call_overhead_ms:.2f} ms per device call; not a measurement): {e.total_ms:.2f} ms = device "
            f"{e.device_ms:.2f} + host<->device transfer {e.transfer_ms:.3f} + CPU fallback {e.host_ms:.2f} "
            f"(measured on this machine)"
        )
    if r.emulated and r.validation is not None:
        con.print(f"note: {r.target} partitions ran EMULATED on this machine's CPU with {r.target}'s numerics; "
                  f"accuracy and partitioning are real, speed is not")
    if r.compile_seconds is not None:
        hits = sum(t.cached for t in r.timings.values())
        cached = f" ({hits}/{len(r.timings)} engines from the compile cache)" if hits else ""
        con.print(f"compile time: {r.compile_seconds:.1f} s{cached}")
    return buf.getvalue()
