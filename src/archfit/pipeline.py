"""The straight line through every stage: capture -> support -> partition -> compile ->
validate -> run. `analyze` stops before compiling; `trace` goes all the way (`trace_seq2seq`,
in seq2seq/trace.py, calls it once per fixed-shape part of an encoder-decoder). This module sits
above the packages it calls (core, shapes, regions, report); none of them imports it at import
time."""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import torch

from .core.capture import Captured, CaptureFailure, capture_fixed
from .core.compile import compile_plan
from .core.module import ArchfitModule, CompiledModule
from .core.options import TraceOptions, resolve_precision
from .core.partition import PartitionPlan, drop_partitions, is_acyclic, plan_partitions, require_full as check_full
from .core.per_partition import mix_targets
from .core.quantize import control_accuracy
from .core.timing import median_seconds
from .core.sets import input_sets
from .core.support import Reason, check_force_cpu, check_support
from .core.validate import validate as run_validation
from .errors import ArchfitError, CaptureError
from .frontends import Imported, import_model, to_source_framework
from .regions import (AttachedModule, RegionPlan, plan_regions, plan_to_dict, regions_page, render_regions,
                      validate_attached)
from .report import FitReport, build_report, estimate_latency, measure_host_ms
from .shapes import Buckets, trace_buckets
from .shapes.pack_trace import trace_packed
from .targets import Target, get_target
from .targets.base import LOSSY

DEFAULT_TARGETS = ("openvino", "onnxruntime")


@dataclass(frozen=True)
class Analysis:
    """Fit of one model on several targets, side by side."""

    model: str
    reports: tuple[FitReport, ...]
    # models that cannot be captured whole: the compiled and host regions (reports are per region)
    regions: RegionPlan | None = None
    # the graphs analysed, by the name their reports carry (the model, or "Model.region")
    captured: dict[str, Captured] = field(default_factory=dict, compare=False, repr=False)
    module: torch.nn.Module | None = field(default=None, compare=False, repr=False)  # the model analysed
    example_inputs: Any = field(default=None, compare=False, repr=False)
    failure: CaptureFailure | None = field(default=None, compare=False, repr=False)  # why it was not captured whole
    # an ONNX/TensorFlow/MXNet model: its import, so compile() validates against its framework too
    imported: Imported | None = field(default=None, compare=False, repr=False)

    def compile(self, target: str | Target = "openvino", **options) -> ArchfitModule:
        """`archfit.trace` of the analysed model on the graphs this analysis captured: analyse on
        several targets, then compile for the one you pick without capturing again (seconds to
        minutes on large models). Options are trace's. The graphs are those of the model when it
        was analysed: after changing its weights or code, call archfit.trace instead."""
        if self.module is None:
            raise ArchfitError("this analysis holds no model to compile; call archfit.trace(model, inputs, ...)")
        opts = TraceOptions.of(**({"name": self.model} | options | {"target": target}))
        module = _trace(self.module, self.example_inputs, opts, self)
        if self.imported is not None and self.imported.text is not None:
            module.text = self.imported.text.fitted(module.longest())
        if self.imported is not None and self.imported.foreign:
            return to_source_framework(module, self.imported, opts.validate)
        return module

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

    def to_html(self) -> str:
        """One self-contained HTML page: every target side by side, the graph coloured by where
        each node runs, the CPU nodes with reasons and source lines."""
        from .report.html import render_page

        sections: dict[str, list[FitReport]] = {}
        for r in self.reports:
            sections.setdefault(r.model, []).append(r)
        return render_page(self.model, list(sections.items()),
                           regions=regions_page(self.regions) if self.regions is not None else None)

    def __str__(self) -> str:
        return self.to_text()


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


def analyze(model: torch.nn.Module, example_inputs: Any = None, targets: Sequence[str | Target] = DEFAULT_TARGETS, *,
            precision: str | None = None, force_cpu: Iterable[str] = (),
            min_partition_size: int | None = None, name: str | None = None, task: str | None = None,
            length: int | None = None) -> Analysis:
    """Fit report per target without compiling anything. A model that cannot be captured whole
    is analysed per compiled region, with its host regions listed (see archfit.regions).
    model: a torch.nn.Module, an ONNX model (path or ModelProto) or a TensorFlow/Keras model
    (keras.Model, tf.function with an input signature, SavedModel directory); see frontends; or a
    Hugging Face / sentence-transformers directory, read for `task` at `length` tokens (see trace)."""
    imported = import_model(model, example_inputs, task, length)
    model, example_inputs = imported.module, imported.inputs
    name = name or imported.name
    captured, why = capture_fixed(model, example_inputs)

    def reports(graph: Captured, label: str) -> list[FitReport]:
        out = []
        for t in targets:
            target = get_target(t)
            prec = resolve_precision(target, precision)
            plan = _plan(graph, target, force_cpu, min_partition_size)
            out.append(build_report(label, plan, prec, target.emulated, estimate=_estimate(graph, plan, target, prec),
                                    graph_module=graph.graph_module))
        return out

    kept = dict(module=model, example_inputs=example_inputs, failure=why, imported=imported)
    if why is None:
        return Analysis(name, tuple(reports(captured, name)), captured={name: captured}, **kept)
    regions = plan_regions(model, example_inputs, why)
    if not regions.regions and captured is not None:
        # no submodule to compile: the whole graph, its data-dependent nodes marked as host-only
        return Analysis(name, tuple(reports(captured, name)), regions, {name: captured}, **kept)
    graphs = {f"{regions.model}.{path}": graph for path, graph in regions.captured.items()}
    return Analysis(name, tuple(r for label, graph in graphs.items() for r in reports(graph, label)), regions, graphs,
                    **kept)


def trace(model: torch.nn.Module, example_inputs: Any = None, target: str | Target | None = None, *,
          options: TraceOptions | None = None, **keywords) -> ArchfitModule:
    """Compile `model` for `target` at the example inputs' shapes; returns an nn.Module that
    takes the same inputs and returns the same output structure as `model`.

    Options come as one archfit.TraceOptions (`options=`), as keywords of the same names, or both
    (keywords then set those fields of `options`):
    target: a target name, or "auto": compile on every real target here, measure the whole model
        with each on the example inputs and keep the fastest (the report lists the alternatives).
    precision: "fp32", "bf16", the target's default (None) or "auto": each precision the target
        computes in here and that passes validation, measured like target="auto".
    force_cpu: op names ('aten.gelu', 'gelu') or node names to keep in PyTorch.
    require_full: fail, listing every node, unless the whole model runs on the target.
    check_payoff: time each partition at compile time and keep it on the target only if it
        beats PyTorch including the boundary crossing.
    validate: compare with eager PyTorch on the example and one random input (see TOLERANCES).
    validation_inputs: more inputs to validate on, structured like example_inputs.
    accuracy: a task gate that decides validation instead of the elementwise tolerance (which is
        still reported): archfit.Detection(), Classification(), Embedding(), Tokens(), or a name,
        e.g. "detection" or "detection:recall=0.98" (see archfit.core.accuracy).
    per_partition: after compiling on `target`, compile each partition on every other real target
        that takes all its ops too, and keep, per partition, the one the whole model measures
        fastest with (the report names each partition's target; the file records it).
    cache: reuse engines from the on-disk compile cache (see archfit.core.cache).
    progress: optional callable taking a one-line status, e.g. for a terminal spinner.
    buckets: archfit.Buckets naming the input dims that vary and the sizes to compile (or the
        sizes seen, to choose them from); returns a BucketedModule that pads, dispatches, unpads.
    dynamic_batch: accept any batch size in dim 0: larger batches run in chunks of the example's
        batch size, smaller ones are padded.
    batch_sizes: with dynamic_batch, smaller row counts to compile too (e.g. (1, 2) beside an
        example of 4 rows): a batch's last chunk, and a server's partial batch, runs on the
        smallest engine that holds it instead of being padded to the full batch.
    check_padding: with buckets, verify at compile time that padding leaves real positions unchanged.
    packing: archfit.Packing: compile an encoder over rows that hold several variable-length
        sequences each; returns a PackedModule whose run/map take lists of sequences.

    A model that cannot be captured whole at fixed shapes (a branch on a tensor's value, an op
    whose output size depends on data, such as NMS) comes back as an AttachedModule: its
    submodules that can be captured are compiled, the rest of its Python runs on the host.

    ONNX and TensorFlow/Keras models (see analyze) are imported into the same graph, validated
    against their own framework's outputs too, and the module returned takes and gives arrays.

    A Hugging Face or sentence-transformers directory (`model` its path; `example_inputs` may be
    left out) is read for `task` (Optimum's names; default from its config's architectures), its
    example inputs made by its own tokenizer at `length` tokens (default 128). The module returned
    carries the tokenizer: module(texts) gives the task's answers, module.encode(texts) embeddings;
    `buckets` may then be plain sizes (the token inputs' length varies over them), `batch` the
    example's rows (with dynamic_batch, the rows of one engine call).
    """
    if target is not None:
        keywords["target"] = target
    options = TraceOptions.of(options, **keywords)
    imported = import_model(model, example_inputs, options.task, options.length, options.batch)
    options = dataclasses.replace(options, name=options.name or imported.name)
    if imported.text is not None and options.buckets is not None and not isinstance(options.buckets, Buckets):
        options = dataclasses.replace(options, buckets=imported.text.buckets(options.buckets))  # sizes: token dims
    source, text = imported.module, imported.text
    if text is not None and text.embedding and options.packing is not None:  # each text pooled on the host
        source = source.tokens_only()
        text = dataclasses.replace(text, pooling=tuple(imported.module.pooling), normalize=imported.module.normalize)
    module = _trace(source, imported.inputs, options)
    if text is not None:
        module.text = text.fitted(module.longest())
    module.image = imported.image
    return to_source_framework(module, imported, options.validate) if imported.foreign else module


def _trace_auto(model, example_inputs, options: TraceOptions, analysis=None) -> ArchfitModule:
    from .auto import trace_auto

    return trace_auto(_trace, model, example_inputs, options)


def _one_calibration(o: TraceOptions, what: str) -> None:
    if o.precision == "int8":
        raise ArchfitError(f"precision='int8' with {what} is not built yet: the calibration sets would need padding "
                           f"to every compiled size; compile one fixed shape for int8, or use bf16 with {what}")


def _trace_packing(model, example_inputs, options: TraceOptions, analysis=None) -> ArchfitModule:
    o = dataclasses.replace(options.resolved(), validation_inputs=None)  # packed rows are checked per sequence
    _one_calibration(o, "packing")
    if o.buckets is not None or o.dynamic_batch:
        raise ArchfitError("packing takes its row lengths from Packing(sizes=/sample=/histogram=) and its batch "
                           "from Packing(rows=); pass neither buckets nor dynamic_batch with it")
    return trace_packed(lambda module, inputs: _trace_model(module, inputs, o), model, example_inputs, o.packing,
                        o.target, o.precision, o.progress)


def _trace_buckets(model, example_inputs, options: TraceOptions, analysis=None) -> ArchfitModule:
    o = options.resolved()
    # each bucket is calibrated and judged on the user's sets padded (or cut) to its shapes; without
    # a lossy precision, the padding check below is what validates the other sizes
    sets = {"calibration": o.calibration, "validation_inputs": o.validation_inputs} if o.precision in LOSSY else {}
    if not sets:
        o = dataclasses.replace(o, validation_inputs=None)

    def one(inputs, **at_bucket):
        return _trace_model(model, inputs, dataclasses.replace(o, **at_bucket))

    return trace_buckets(one, model, example_inputs, o.buckets, o.dynamic_batch, o.precision,
                         check_padding=o.check_padding, progress=o.progress, sets=sets, batch_sizes=o.batch_sizes)


def _trace_fixed(model, example_inputs, options: TraceOptions, analysis=None) -> ArchfitModule:
    return _trace_model(model, example_inputs, options.resolved(), analysis)


# The paths of trace, the first that applies taking the model: (what it is for, when, how).
_PATHS: tuple[tuple[str, Callable[[TraceOptions], bool], Callable[..., ArchfitModule]], ...] = (
    ("target or precision measured", lambda o: o.target == "auto" or o.precision == "auto", _trace_auto),
    ("several sequences per compiled row", lambda o: o.packing is not None, _trace_packing),
    ("one static module per size", lambda o: o.buckets is not None or o.dynamic_batch, _trace_buckets),
    ("one fixed shape", lambda o: True, _trace_fixed),
)


def _trace(model: torch.nn.Module, example_inputs: Any, options: TraceOptions,
           analysis: Analysis | None = None) -> ArchfitModule:
    """A torch model through the first path of _PATHS that applies (an analysis: its graphs)."""
    how = next(run for _what, applies, run in _PATHS if applies(options))
    return how(model, example_inputs, options, analysis)


def _trace_model(model, example_inputs, options: TraceOptions, analysis: Analysis | None = None):
    """One fixed-shape graph, or, when the model cannot be captured whole, its regions (those an
    analysis captured already when given one). `options` resolved."""
    t0 = time.perf_counter()
    if analysis is None:
        captured, why = capture_fixed(model, example_inputs)
    else:
        captured, why = analysis.captured.get(analysis.model), analysis.failure
    name = options.name or type(model).__name__
    if why is None:
        check_force_cpu([captured.graph_module], options.force_cpu)
        return _trace_captured(model, captured, options, name, t0)
    if options.require_full:
        raise CaptureError(f"{name}: {why}; require_full asks for the whole model on the target: move that code out "
                           f"of forward()")
    plan = analysis.regions if analysis is not None else None
    return _trace_regions(model, example_inputs, why, options, name, plan)


def _trace_captured(model: torch.nn.Module, captured: Captured, options: TraceOptions, name: str,
                    t0: float | None = None) -> CompiledModule:
    """Partition, compile, validate and report a graph captured at fixed shapes."""
    t0 = time.perf_counter() if t0 is None else t0
    target, precision = options.target, options.precision
    plan = _plan(captured, target, options.force_cpu, options.min_partition_size)
    if options.require_full:
        check_full(plan)

    def attempt(float_layers: tuple[str, ...], float_precision: str | None = options.float_precision):
        o = dataclasses.replace(options, float_layers=float_layers, float_precision=float_precision)
        return _compile_validated(model, captured, plan, o, deciding=precision != "int8" or not o.accuracy_control)

    compiled, validation = attempt(options.float_layers)
    quantization = None
    if precision == "int8":
        compiled, validation, quantization = control_accuracy(
            captured, compiled, validation, options, attempt,
            lambda c: median_seconds(lambda: c.graph_module(*captured.example_inputs)) * 1e3)
    report = build_report(name, compiled.plan, precision, target.emulated, compiled.timings, validation,
                          time.perf_counter() - t0, estimate=_estimate(captured, compiled.plan, target, precision),
                          graph_module=captured.graph_module)
    return _module(captured, compiled, options, dataclasses.replace(report, quantization=quantization))


def _module(captured: Captured, compiled, options: TraceOptions, report=None) -> CompiledModule:
    return CompiledModule(compiled.graph_module, captured.in_spec, captured.out_spec, captured.inputs,
                          options.target.name, options.precision, report, options.target.emulated,
                          one_thread=compiled.one_thread)


def _compile_validated(model: torch.nn.Module, captured: Captured, plan: PartitionPlan, options: TraceOptions,
                       deciding: bool = True):
    """The plan compiled (per partition across targets where asked) and validated; a failed
    validation raises when `deciding` (int8 with accuracy control decides after)."""
    compiled = compile_plan(captured, plan, options)
    if options.require_full:  # nodes the backend rejected at compile time went to the CPU
        check_full(compiled.plan)
    if options.per_partition and compiled.plan.partitions:
        compiled = mix_targets(captured, compiled, options)
    if not options.validate:
        return compiled, None
    sets = (input_sets(options.validation_inputs, captured.in_spec, "validation_inputs")
            if options.validation_inputs is not None else None)
    return compiled, run_validation(model, _module(captured, compiled, options), captured, compiled,
                                    options.precision, validation_set=sets, accuracy=options.accuracy,
                                    raise_on_failure=deciding and not options.report_only)


def _trace_regions(model, example_inputs, why: CaptureFailure, options: TraceOptions, name: str,
                   plan: RegionPlan | None = None) -> AttachedModule:
    """Compile the submodules that capture at fixed shapes; the rest stays the model's Python
    (the regions an analysis planned already, when given its plan)."""
    _one_calibration(options, "a model compiled as regions")
    plan = plan if plan is not None else plan_regions(model, example_inputs, why)
    check_force_cpu([g.graph_module for g in plan.captured.values()], options.force_cpu)
    if not plan.regions:
        raise CaptureError(f"{name}: {why}; no submodule holding enough of its FLOPs captures at fixed shapes "
                           f"either, so nothing can be compiled: move that code out of forward() or rewrite it with "
                           f"torch.where / torch.cond")
    compiled = {}
    for i, (path, graph) in enumerate(plan.captured.items()):
        options.say(f"region {path} ({i + 1}/{len(plan.captured)})")
        # a region's outputs are features, not the task's: its check is elementwise; with a task gate
        # the whole model's gate below decides, and the regions' errors are only reported
        region_options = dataclasses.replace(options, accuracy=None, report_only=options.accuracy is not None,
                                             validation_inputs=None)
        module = _trace_captured(model.get_submodule(path), graph, region_options, f"{plan.model}.{path}")
        if module.report.partitions:  # a region that runs wholly in PyTorch stays the model's own module
            compiled[path] = module
    if not compiled:
        raise CaptureError(f"{name}: {why}, so it runs as regions, and no region kept a partition on "
                           f"{options.target.name} (none ran faster there than in PyTorch, or its ops are forced to "
                           f"the CPU); run it in PyTorch")
    attached = AttachedModule(model, compiled, plan)
    if not options.validate:
        return attached
    validation = validate_attached(model, attached, example_inputs, options.precision, options.accuracy)
    return AttachedModule(model, compiled, plan, attached.digests, validation)
