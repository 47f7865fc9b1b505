"""Models that cannot be captured whole at fixed shapes (NMS behind a branch on a tensor's size,
Python loops over detections, inputs or outputs torch.export cannot flatten): archfit compiles
the largest submodules that can be, and leaves the rest of the model's Python on the host CPU.

The model is run once with hooks recording what each submodule is called with. Walking the
module tree from the top, a module that captures at fixed shapes (no data-dependent op, the
same input shapes on every call) becomes a compiled region; one that does not is a host region,
named with the reason and the source line capture stopped at, and its children are tried."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils import _pytree as pytree
from torch.utils.flop_counter import FlopCounterMode

from .capture import Captured, capture, first_data_dependent_origin, node_source, normalize_inputs, op_name
from .compile import share_cores, shared_copy
from .errors import ArtifactError, CaptureError, ValidationError

# Submodules holding less than this share of the model's FLOPs stay in PyTorch: compiling a
# ReLU or a small projection alone costs a boundary crossing that its compute cannot repay.
MIN_REGION_FLOP_SHARE = 0.005


@dataclass(frozen=True)
class HostRegion:
    """A module whose forward runs as Python on the host, and why."""

    module: str  # 'SSD' (the model) or 'SSD.anchor_generator'
    reason: str  # what stopped capture, one line
    source: str | None  # 'file:line (code)' where it stopped
    flops: int  # FLOPs of this module that no compiled region inside it covers


@dataclass(frozen=True)
class RegionPlan:
    model: str  # class name of the model
    regions: tuple[str, ...]  # paths of the submodules compiled as regions
    region_flops: dict[str, int]
    host: tuple[HostRegion, ...]
    total_flops: int
    # each region's graph, captured while planning, so compiling it does not capture it again
    captured: dict[str, Captured] = field(default_factory=dict, compare=False, repr=False)

    @property
    def host_flops(self) -> int:
        return self.total_flops - sum(self.region_flops.values())


def _shapes(inputs) -> list:
    return [(tuple(t.shape), t.dtype) if isinstance(t, torch.Tensor) else t for t in pytree.tree_flatten(inputs)[0]]


def _record_calls(model: torch.nn.Module, args: tuple, kwargs: dict):
    """{path: [(args, kwargs) per call]} and FLOPs per path, from one eager run."""
    calls: dict[str, list] = {}
    hooks = []
    for path, mod in model.named_modules():
        def hook(_m, a, kw, path=path):
            calls.setdefault(path, []).append((a, kw))
        hooks.append(mod.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(*args, **kwargs)
    finally:
        for h in hooks:
            h.remove()
    root = type(model).__name__
    flops = {}
    for key, per_op in counter.get_flop_counts().items():
        if key == root or key.startswith(root + "."):
            flops[key[len(root) + 1:]] = int(sum(per_op.values()))
    return calls, flops


def capture_fixed(module: torch.nn.Module, inputs, strict: bool = True):
    """(Captured, None) when `module` captures at fixed shapes; else (Captured or None, (reason,
    source line)): the graph when it captured but holds a data-dependent op. strict: errors that
    are not about capture itself (not a module, a non-tensor input) propagate."""
    try:
        captured = capture(module, inputs)
    except CaptureError as e:
        if strict and e.reason is None:
            raise
        return None, (e.reason or str(e), e.where)
    origin = first_data_dependent_origin(captured.graph_module)
    if origin is None:
        return captured, None
    return captured, (f"{op_name(origin)} has a data-dependent output shape", node_source(origin))


def _region(module: torch.nn.Module, inputs, calls: list):
    """(Captured, None) if `module` can be a compiled region, else (None, (reason, source line))."""
    if len({repr(_shapes(c)) for c in calls}) > 1:
        return None, (f"called {len(calls)} times with different input shapes; a fixed-shape engine holds one", None)
    captured, why = capture_fixed(module, inputs, strict=False)
    return (captured, None) if why is None else (None, why)


def _as_inputs(args: tuple, kwargs: dict):
    if kwargs and args:
        return None  # torch.neuron-style example inputs are positional or keyword, not both
    return dict(kwargs) if kwargs else tuple(args)


def plan_regions(model: torch.nn.Module, example_inputs: Any, top_reason: tuple[str, str | None]) -> RegionPlan:
    args, kwargs = normalize_inputs(example_inputs)
    calls, flops = _record_calls(model, args, kwargs)
    total = flops.get("", 0)
    region_flops, graphs, failed = {}, {}, {"": top_reason}

    def visit(prefix: str, module: torch.nn.Module) -> None:
        for name, child in module.named_children():
            path = f"{prefix}.{name}" if prefix else name
            if path not in calls or flops.get(path, 0) < MIN_REGION_FLOP_SHARE * total:
                continue  # never called, or too small to pay for its own engine
            first = calls[path][0]
            inputs = _as_inputs(*first)
            captured, why = (None, ("called with positional and keyword tensors", None)) if inputs is None else \
                _region(child, inputs, calls[path])
            if why is None:
                region_flops[path], graphs[path] = flops.get(path, 0), captured
            else:
                failed[path] = why
                visit(path, child)

    visit("", model)
    root = type(model).__name__
    host = []
    for path, (reason, source) in failed.items():
        inside = sum(f for r, f in region_flops.items() if path == "" or r.startswith(path + "."))
        host.append(HostRegion(f"{root}.{path}" if path else root, reason, source, max(0, flops.get(path, 0) - inside)))
    return RegionPlan(root, tuple(graphs), region_flops, tuple(host), total, graphs)


def weights_digest(module: torch.nn.Module) -> str:
    """Identity of a module's parameters and buffers, to check a model attached at load time is
    the one the file was compiled from."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


def class_path(model: torch.nn.Module) -> str:
    cls = type(model)
    return f"{cls.__module__}.{cls.__qualname__}"


def _set_submodule(root: torch.nn.Module, path: str, module: torch.nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    parent._modules[name] = module


class AttachedModule(torch.nn.Module):
    """The model with its compiled regions swapped in; the rest of its forward() is its own
    Python, run on the host. Returned by archfit.trace for models that cannot be captured whole."""

    def __init__(self, model: torch.nn.Module, regions: dict[str, torch.nn.Module], plan: RegionPlan,
                 digests: dict[str, str] | None = None):
        super().__init__()
        # a copy of the module tree sharing every weight: swapping submodules never touches the
        # user's model and never duplicates its memory
        self.model = shared_copy(model)
        self.model.eval()
        for path, compiled in regions.items():
            _set_submodule(self.model, path, compiled)
        share_cores(self)  # the model's own Python (e.g. NMS) computes between the regions' engine calls
        self.regions = dict(regions)
        self.plan = plan
        self.model_class = class_path(model)
        self.digests = digests or {p: weights_digest(model.get_submodule(p)) for p in regions}
        first = next(iter(regions.values()))
        self.target, self.precision, self.emulated = first.target, first.precision, first.emulated
        self.validation = None

    @property
    def report(self):
        """Fit report of the region holding the most FLOPs (`reports` has every region's)."""
        path = max(self.regions, key=lambda p: self.plan.region_flops.get(p, 0))
        return self.regions[path].report

    @property
    def reports(self) -> dict:
        return {p: m.report for p, m in self.regions.items()}

    def forward(self, *args, **kwargs):
        with torch.no_grad():
            return self.model(*args, **kwargs)

    def summary(self) -> str:
        return render_regions(self.plan, list(self.regions))

    def extra_repr(self) -> str:
        return f"model={self.model_class}, compiled regions={list(self.regions)}, target={self.target!r}"


def render_regions(plan: RegionPlan, compiled: list[str] | None = None) -> str:
    total = plan.total_flops or 1
    names = compiled if compiled is not None else list(plan.regions)
    lines = [f"{plan.model} cannot be captured whole at fixed shapes; archfit compiles its submodules and runs the "
             f"rest of its Python on the host CPU.",
             f"compiled regions ({sum(plan.region_flops.get(p, 0) for p in names) / total:.1%} of FLOPs):"]
    lines += [f"  {plan.model}.{p}: {plan.region_flops.get(p, 0) / 1e9:.2f} GFLOPs" for p in names] or ["  none"]
    lines.append(f"host regions ({plan.host_flops / total:.1%} of FLOPs; torch's FLOP counter counts matmuls and "
                 f"convolutions, not NMS or elementwise work), kept on the CPU:")
    for h in plan.host:
        at = f" at {h.source}" if h.source else ""
        lines.append(f"  {h.module}: {h.reason}{at}; {h.flops / total:.1%} of FLOPs")
    return "\n".join(lines)


def attach(manifest_attach: dict, model: torch.nn.Module | None, regions: dict[str, torch.nn.Module], path,
           plan: RegionPlan) -> AttachedModule:
    """Rebuild an AttachedModule at load time around the user's model."""
    wanted = manifest_attach["class"]
    if model is None:
        raise ArtifactError(f"{path} holds compiled regions of {wanted}; the rest of its forward() is Python that "
                            f"archfit does not store: pass the model to attach to, archfit.load(path, model=...) "
                            f"(CLI: archfit run FILE --model NAME)")
    if class_path(model) != wanted:
        raise ArtifactError(f"{path} was compiled from a {wanted}, not the {class_path(model)} given; pass the "
                            f"model it was compiled from")
    digests = manifest_attach["digests"]
    for p in regions:
        try:
            sub = model.get_submodule(p)
        except AttributeError:
            raise ArtifactError(f"{path}: the model given has no submodule {p!r}; pass the model it was compiled "
                                f"from") from None
        if weights_digest(sub) != digests[p]:
            raise ArtifactError(f"{path}: the weights of {wanted}.{p} differ from the ones compiled into the file; "
                                f"pass the model with the weights it was compiled with, or compile again")
    return AttachedModule(model, regions, plan, digests)


def plan_to_dict(plan: RegionPlan) -> dict:
    return {"model": plan.model, "regions": list(plan.regions), "region_flops": plan.region_flops,
            "host": [h.__dict__ for h in plan.host], "total_flops": plan.total_flops}


def plan_from_dict(d: dict) -> RegionPlan:
    return RegionPlan(d["model"], tuple(d["regions"]), {k: int(v) for k, v in d["region_flops"].items()},
                      tuple(HostRegion(**h) for h in d["host"]), int(d["total_flops"]))


def validate_attached(model: torch.nn.Module, attached: AttachedModule, example_inputs: Any, precision: str):
    """The whole model against eager PyTorch on the example and one random input. Outputs are
    compared as multisets of values: detections whose scores tie within rounding may come out
    of NMS in another order, which is not an error; a different count is."""
    from .validate import TOLERANCES, InputCheck, Validation, _compare, random_like

    atol, rtol = TOLERANCES[precision]
    args, kwargs = normalize_inputs(example_inputs)
    flat, spec = pytree.tree_flatten((args, kwargs))
    checks = []
    for label, values in (("example inputs", flat), ("random inputs", random_like(flat))):
        a, kw = pytree.tree_unflatten(list(values), spec)
        with torch.no_grad():
            want, got = pytree.tree_flatten(model(*a, **kw))[0], pytree.tree_flatten(attached(*a, **kw))[0]
        if len(want) != len(got):
            raise ValidationError(f"{attached.model_class} returns {len(got)} outputs compiled and {len(want)} in eager "
                                  f"PyTorch on the {label}")
        outs = []
        for i, (g, w) in enumerate(zip(got, want)):
            if isinstance(w, torch.Tensor) and isinstance(g, torch.Tensor) and g.shape == w.shape:
                g, w = g.flatten().sort().values, w.flatten().sort().values
            outs.append(_compare(f"output {i}", g, w, atol, rtol))
        checks.append(InputCheck(label, tuple(outs)))
        bad = next((o for o in outs if not o.ok), None)
        if bad is not None:
            raise ValidationError(
                f"{attached.model_class}: {bad.output} differs from eager PyTorch on the {label} (max abs error "
                f"{bad.max_abs:.3e} > {bad.tolerance:.3e}, or another shape: data-dependent post-processing such as "
                f"NMS amplifies small differences); use precision='fp32' or force ops to the CPU with force_cpu=[...]")
    return Validation(precision, atol, rtol, tuple(checks))
