"""Roofline latency estimates for accelerators that are not on this machine.

Per target partition: max(FLOPs / (peak of one core x utilisation), bytes / DRAM bandwidth) plus a
fixed per-call overhead; plus host<->device transfer of every boundary tensor; plus the CPU
time of the fallback nodes, measured here. Utilisation and overhead are fitted against Neuron's
published latencies (benchmarks/calibrate_neuron.py). It is an estimate, and says so."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import fx

from ..core.capture import attr_of
from ..core.partition import PartitionPlan
from ..targets.base import ChipSpec


@dataclass(frozen=True)
class PartitionEstimate:
    index: int
    compute_ms: float
    memory_ms: float
    overhead_ms: float
    transfer_ms: float

    @property
    def device_ms(self) -> float:
        return max(self.compute_ms, self.memory_ms) + self.overhead_ms


@dataclass(frozen=True)
class LatencyEstimate:
    chip: str
    precision: str
    partitions: tuple[PartitionEstimate, ...]
    host_ms: float  # fallback nodes, measured on this machine's CPU
    utilisation: float
    call_overhead_ms: float
    calibration_error: float | None = None  # rms log error of the calibration fit (0.23: typically x1.26 off)

    @property
    def device_ms(self) -> float:
        return sum(p.device_ms for p in self.partitions)

    @property
    def transfer_ms(self) -> float:
        return sum(p.transfer_ms for p in self.partitions)

    @property
    def total_ms(self) -> float:
        return self.device_ms + self.transfer_ms + self.host_ms


def _weight_bytes(gm: fx.GraphModule, names: set[str]) -> int:
    """Bytes of the weights the partition's nodes read (each weight once)."""
    seen, total = set(), 0
    for node in gm.graph.nodes:
        if node.name not in names:
            continue
        for arg in node.all_input_nodes:
            if arg.op == "get_attr" and arg.target not in seen:
                seen.add(arg.target)
                t = attr_of(gm, arg.target)
                if isinstance(t, torch.Tensor):
                    total += t.numel() * t.element_size()
    return total


class _HostTimer(fx.Interpreter):
    """Runs the whole graph eagerly, timing only the nodes that stay on the host."""

    def __init__(self, gm: fx.GraphModule, host: set[str]):
        super().__init__(gm)
        self.host = host
        self.seconds = 0.0

    def run_node(self, n: fx.Node):
        if n.name not in self.host:
            return super().run_node(n)
        t0 = time.perf_counter()
        out = super().run_node(n)
        self.seconds += time.perf_counter() - t0
        return out


def measure_host_ms(gm: fx.GraphModule, plan: PartitionPlan, inputs: Sequence[torch.Tensor], reps: int = 3) -> float:
    """CPU time of the fallback nodes on this machine (min over a few runs)."""
    on_target = {name for p in plan.partitions for name in p.nodes}
    host = {n.name for n in gm.graph.nodes if n.op == "call_function" and n.name not in on_target}
    if not host:
        return 0.0
    best = float("inf")
    with torch.no_grad():
        for _ in range(reps):
            timer = _HostTimer(gm, host)
            timer.run(*inputs)
            best = min(best, timer.seconds)
    return best * 1e3


def estimate_latency(gm: fx.GraphModule, plan: PartitionPlan, chip: ChipSpec, precision: str,
                     host_ms: float) -> LatencyEstimate:
    # the chip facts give no fp8 rate: fp8 matmuls are estimated at the bf16 rate, not faster
    peak = chip.core_tflops["bf16" if precision == "fp8" else precision] * 1e12 * chip.utilisation
    bw = chip.dram_gib_s * 2**30
    link = chip.host_link_gb_s * 1e9
    parts = []
    for p in plan.partitions:
        moved = _weight_bytes(gm, set(p.nodes)) + p.boundary_bytes
        parts.append(PartitionEstimate(
            index=p.index,
            compute_ms=p.flops / peak * 1e3,
            memory_ms=moved / bw * 1e3,
            overhead_ms=chip.call_overhead_ms,
            transfer_ms=p.boundary_bytes / link * 1e3,
        ))
    return LatencyEstimate(chip.name, precision, tuple(parts), host_ms, chip.utilisation, chip.call_overhead_ms,
                           chip.calibration_error)
