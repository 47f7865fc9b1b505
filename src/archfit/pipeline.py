"""The straight line through every stage: capture -> support -> partition -> compile ->
validate -> run. `analyze` stops before compiling; `trace` goes all the way."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import torch

from .capture import Captured, capture, describe_node, first_data_dependent_origin, normalize_inputs
from .buckets import Buckets
from .compile import compile_plan
from .dispatch import BucketedModule
from .errors import ArchfitError, CaptureError
from .estimate import estimate_latency, measure_host_ms
from .partition import PartitionPlan, drop_partitions, is_acyclic, plan_partitions, require_full as check_full
from .report import FitReport, build_report
from .runtime import CompiledModule
from .support import Reason, check_support
from .targets import Target, get_target
from .targets.base import PRECISIONS
from .validate import validate as run_validation
from .variable import trace_buckets

DEFAULT_TARGETS = ("openvino", "onnxruntime")


@dataclass(frozen=True)
class Analysis:
    """Fit of one model on several targets, side by side."""

    model: str
    reports: tuple[FitReport, ...]

    def __getitem__(self, target: str) -> FitReport:
        for r in self.reports:
            if r.target == target:
                return r
        raise KeyError(target)

    def to_text(self) -> str:
        return "\n".join(r.to_text() for r in self.reports)

    def to_dict(self) -> dict:
        return {"model": self.model, "reports": [r.to_dict() for r in self.reports]}

    def __str__(self) -> str:
        return self.to_text()


def _name(model: torch.nn.Module, name: str | None) -> str:
    return name or type(model).__name__


def _precision(target: Target, precision: str | None) -> str:
    precision = precision or target.default_precision
    if precision not in PRECISIONS or precision not in target.precisions:
        raise ArchfitError(f"precision {precision!r} is not offered by target {target.name!r}; "
                           f"choose one of {', '.join(target.precisions)}")
    return precision


def _plan(captured: Captured, target: Target, force_cpu: Iterable[str], min_size: int | None) -> PartitionPlan:
    table = check_support(captured, target, force_cpu)
    plan = plan_partitions(captured.graph_module, table, target.min_partition_size if min_size is None else min_size)
    if target.policy is not None:
        dropped = target.policy(plan)
        if dropped:
            plan = drop_partitions(captured.graph_module, plan, dropped, Reason.POLICY)
    assert is_acyclic(captured.graph_module, plan), "partitioner produced a cycle"  # cheap, and must never fire
    return plan


def _estimate(captured: Captured, plan: PartitionPlan, target: Target, precision: str):
    """Roofline latency for targets that describe a chip (the accelerator profiles)."""
    if target.chip is None:
        return None
    host_ms = measure_host_ms(captured.graph_module, plan, captured.example_inputs)
    return estimate_latency(captured.graph_module, plan, target.chip, precision, host_ms)


def analyze(model: torch.nn.Module, example_inputs: Any, targets: Sequence[str | Target] = DEFAULT_TARGETS, *,
            precision: str | None = None, force_cpu: Iterable[str] = (),
            min_partition_size: int | None = None, name: str | None = None) -> Analysis:
    """Fit report per target without compiling anything."""
    captured = capture(model, example_inputs)
    reports = []
    for t in targets:
        target = get_target(t)
        prec = _precision(target, precision)
        plan = _plan(captured, target, tuple(force_cpu), min_partition_size)
        reports.append(build_report(_name(model, name), plan, prec, target.emulated,
                                    estimate=_estimate(captured, plan, target, prec)))
    return Analysis(_name(model, name), tuple(reports))


def trace(model: torch.nn.Module, example_inputs: Any, target: str | Target = "openvino", *,
          precision: str | None = None, force_cpu: Iterable[str] = (), require_full: bool = False,
          min_partition_size: int | None = None, check_payoff: bool = True,
          validate: bool = True, validation_inputs: Any = None, cache: bool = True, progress=None,
          name: str | None = None, buckets: Buckets | None = None, dynamic_batch: bool = False,
          check_padding: bool = True) -> CompiledModule | BucketedModule:
    """Compile `model` for `target` at the example inputs' shapes; returns an nn.Module that
    takes the same inputs and returns the same output structure as `model`.

    force_cpu: op names ('aten.gelu', 'gelu') or node names to keep in PyTorch.
    require_full: fail, listing every node, unless the whole model runs on the target.
    check_payoff: time each partition at compile time and keep it on the target only if it
        beats PyTorch including the boundary crossing.
    validate: compare with eager PyTorch on the example and one random input (see TOLERANCES).
    validation_inputs: more inputs to validate on, structured like example_inputs.
    cache: reuse engines from the on-disk compile cache (see archfit.cache).
    progress: optional callable taking a one-line status, e.g. for a terminal spinner.
    buckets: archfit.Buckets naming the input dims that vary and the sizes to compile (or the
        sizes seen, to choose them from); returns a BucketedModule that pads, dispatches, unpads.
    dynamic_batch: accept any batch size in dim 0: larger batches run in chunks of the example's
        batch size, smaller ones are padded.
    check_padding: with buckets, verify at compile time that padding leaves real positions unchanged.
    """
    t0 = time.perf_counter()
    target = get_target(target)
    precision = _precision(target, precision)
    if buckets is not None or dynamic_batch:
        def trace_one(inputs):
            return trace(model, inputs, target, precision=precision, force_cpu=force_cpu, require_full=require_full,
                         min_partition_size=min_partition_size, check_payoff=check_payoff, validate=validate,
                         cache=cache, progress=progress, name=name)

        return trace_buckets(trace_one, model, example_inputs, buckets, dynamic_batch, precision,
                             check_padding=check_padding, progress=progress)
    captured = capture(model, example_inputs)
    origin = first_data_dependent_origin(captured.graph_module)
    if origin is not None:
        raise CaptureError(
            f"{_name(model, name)}: {describe_node(origin)} has a data-dependent output shape; "
            f"archfit compiles at fixed shapes: move it out of forward() (e.g. into post-processing)"
        )
    plan = _plan(captured, target, tuple(force_cpu), min_partition_size)
    if require_full:
        check_full(plan)
    compiled = compile_plan(captured, plan, target, precision, check_payoff and target.measure_payoff,
                            use_cache=cache, progress=progress)
    module = CompiledModule(compiled.graph_module, captured.in_spec, captured.out_spec, captured.inputs,
                            target.name, precision, emulated=target.emulated)
    validation = None
    if validate:
        extra = None
        if validation_inputs is not None:
            extra = normalize_inputs(validation_inputs)
        validation = run_validation(model, module, captured, compiled, precision, extra_inputs=extra)
    module.report = build_report(_name(model, name), compiled.plan, precision, target.emulated,
                                 compiled.timings, validation, time.perf_counter() - t0,
                                 estimate=_estimate(captured, compiled.plan, target, precision))
    return module
