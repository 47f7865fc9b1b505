"""The straight line through every stage: capture -> support -> partition -> compile ->
validate -> run. `analyze` stops before compiling; `trace` goes all the way."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import torch

from .capture import Captured, normalize_inputs
from .buckets import Buckets
from .compile import compile_plan
from .dispatch import BucketedModule
from .errors import ArchfitError, CaptureError
from .estimate import estimate_latency, measure_host_ms
from .regions import (AttachedModule, RegionPlan, capture_fixed, plan_regions, plan_to_dict, render_regions,
                      validate_attached)
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
    # models that cannot be captured whole: the compiled and host regions (reports are per region)
    regions: RegionPlan | None = None

    def __getitem__(self, target: str) -> FitReport:
        for r in self.reports:
            if r.target == target:
                return r
        raise KeyError(target)

    def to_text(self) -> str:
        head = [render_regions(self.regions), ""] if self.regions is not None else []
        return "\n".join(head + [r.to_text() for r in self.reports])

    def to_dict(self) -> dict:
        d = {"model": self.model, "reports": [r.to_dict() for r in self.reports]}
        if self.regions is not None:
            d["regions"] = plan_to_dict(self.regions)
        return d

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
    """Fit report per target without compiling anything. A model that cannot be captured whole
    is analysed per compiled region, with its host regions listed (see archfit.regions)."""
    captured, why = capture_fixed(model, example_inputs)
    options = (targets, precision, tuple(force_cpu), min_partition_size)
    if why is None:
        return Analysis(_name(model, name), _reports(captured, _name(model, name), *options))
    regions = plan_regions(model, example_inputs, why)
    if not regions.regions and captured is not None:
        # no submodule to compile: the whole graph, its data-dependent nodes marked as host-only
        return Analysis(_name(model, name), _reports(captured, _name(model, name), *options), regions)
    reports = [r for path, graph in regions.captured.items()
               for r in _reports(graph, f"{regions.model}.{path}", *options)]
    return Analysis(_name(model, name), tuple(reports), regions)


def _reports(captured: Captured, name: str, targets, precision, force_cpu: tuple, min_partition_size):
    reports = []
    for t in targets:
        target = get_target(t)
        prec = _precision(target, precision)
        plan = _plan(captured, target, force_cpu, min_partition_size)
        reports.append(build_report(name, plan, prec, target.emulated, estimate=_estimate(captured, plan, target, prec)))
    return tuple(reports)


def trace(model: torch.nn.Module, example_inputs: Any, target: str | Target = "openvino", *,
          precision: str | None = None, force_cpu: Iterable[str] = (), require_full: bool = False,
          min_partition_size: int | None = None, check_payoff: bool = True,
          validate: bool = True, validation_inputs: Any = None, cache: bool = True, progress=None,
          name: str | None = None, buckets: Buckets | None = None, dynamic_batch: bool = False,
          check_padding: bool = True) -> CompiledModule | BucketedModule | AttachedModule:
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

    A model that cannot be captured whole at fixed shapes (a branch on a tensor's value, an op
    whose output size depends on data, such as NMS) comes back as an AttachedModule: its
    submodules that can be captured are compiled, the rest of its Python runs on the host.
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
    captured, why = capture_fixed(model, example_inputs)
    options = dict(force_cpu=tuple(force_cpu), require_full=require_full, min_partition_size=min_partition_size,
                   check_payoff=check_payoff, cache=cache, validate=validate, progress=progress)
    if why is None:
        return _trace_captured(model, captured, target, precision, name=name, validation_inputs=validation_inputs,
                               t0=t0, **options)
    # data-dependent: compile the submodules that are not, keep the rest in Python
    if require_full:
        raise CaptureError(f"{_name(model, name)}: {why[0]}{f' at {why[1]}' if why[1] else ''}; require_full "
                           f"asks for the whole model on the target: move that code out of forward()")
    return _trace_regions(model, example_inputs, why, target, precision, name, options)


def _trace_captured(model: torch.nn.Module, captured: Captured, target: Target, precision: str, *, force_cpu: tuple,
                    require_full: bool, min_partition_size, check_payoff: bool, cache: bool, validate: bool,
                    progress, name, validation_inputs=None, t0: float | None = None) -> CompiledModule:
    """Partition, compile, validate and report a graph captured at fixed shapes."""
    t0 = time.perf_counter() if t0 is None else t0
    plan = _plan(captured, target, force_cpu, min_partition_size)
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


def _trace_regions(model, example_inputs, why, target: Target, precision: str, name, options: dict) -> AttachedModule:
    """Compile the submodules that capture at fixed shapes; the rest stays the model's Python."""
    plan = plan_regions(model, example_inputs, why)
    if not plan.regions:
        where = f" at {why[1]}" if why[1] else ""
        raise CaptureError(f"{_name(model, name)}: {why[0]}{where}; no submodule holding enough of its FLOPs "
                           f"captures at fixed shapes either, so nothing can be compiled: move that code out of "
                           f"forward() or rewrite it with torch.where / torch.cond")
    compiled = {}
    for i, (path, graph) in enumerate(plan.captured.items()):
        if options["progress"] is not None:
            options["progress"](f"region {path} ({i + 1}/{len(plan.captured)})")
        module = _trace_captured(model.get_submodule(path), graph, target, precision, name=f"{plan.model}.{path}",
                                 **options)
        if module.report.partitions:  # a region that runs wholly in PyTorch stays the model's own module
            compiled[path] = module
    if not compiled:
        raise CaptureError(f"{_name(model, name)}: no compiled region pays off on {target.name}; run it in PyTorch")
    attached = AttachedModule(model, compiled, plan)
    if options["validate"]:
        attached.validation = validate_attached(model, attached, example_inputs, precision)
    return attached
