"""Models that cannot be captured whole at fixed shapes (NMS behind a branch on a tensor's size,
Python loops over detections, inputs or outputs torch.export cannot flatten): archfit compiles
the largest submodules that can be, and leaves the rest of the model's Python on the host CPU.

The model is run once with hooks recording what each submodule is called with. Walking the
module tree from the top, a module that captures at fixed shapes (no data-dependent op, the
same input shapes on every call) becomes a compiled region; one that does not is a host region,
named with the reason and the source line capture stopped at, and its children are tried."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch.utils import _pytree as pytree
from torch.utils.flop_counter import FlopCounterMode

from ..core.capture import Captured, CaptureFailure, capture_fixed, normalize_inputs

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


def _region(module: torch.nn.Module, inputs, calls: list) -> tuple[Captured | None, CaptureFailure | None]:
    """(Captured, None) if `module` can be a compiled region, else (None, why)."""
    if len({repr(_shapes(c)) for c in calls}) > 1:
        return None, CaptureFailure(f"called {len(calls)} times with different input shapes; a fixed-shape engine "
                                    f"holds one")
    captured, why = capture_fixed(module, inputs, strict=False)
    return (captured, None) if why is None else (None, why)


def _as_inputs(args: tuple, kwargs: dict):
    if kwargs and args:
        return None  # torch.neuron-style example inputs are positional or keyword, not both
    return dict(kwargs) if kwargs else tuple(args)


def _data_dependent(model: torch.nn.Module, args: tuple, kwargs: dict, calls: dict) -> dict[str, str]:
    """{path: how its input shapes moved} for submodules whose inputs change shape when the data
    does (a head after RoI pooling gets one row per proposal kept): the model run again on fresh
    inputs shaped like the example (core.validate.random_like). A region compiled at the example's
    count would refuse the next image's. A second run that fails says nothing; none is reported."""
    from ..core.validate import random_like

    leaves, spec = pytree.tree_flatten((args, kwargs))
    tensors = [x for x in leaves if isinstance(x, torch.Tensor)]
    fresh = iter(random_like(tensors, seed=1))
    args2, kwargs2 = pytree.tree_unflatten([next(fresh) if isinstance(x, torch.Tensor) else x for x in leaves], spec)
    try:
        again, _ = _record_calls(model, args2, kwargs2)
    except Exception:  # noqa: BLE001 - the model's own error on made-up data; the first run stands
        return {}
    moved = {}
    for path, first in calls.items():
        if path not in again:
            continue
        # tensors only: other leaves (an ImageList, a config object) print their address
        a = [s for s in _shapes(first[0]) if isinstance(s, tuple)]
        b = [s for s in _shapes(again[path][0]) if isinstance(s, tuple)]
        if a != b:
            pair = next(((x[0], y[0]) for x, y in zip(a, b) if x != y), None)
            moved[path] = f"{list(pair[0])}, then {list(pair[1])}" if pair else f"{len(a)} tensors, then {len(b)}"
    return moved


def plan_regions(model: torch.nn.Module, example_inputs: Any, top_reason: CaptureFailure) -> RegionPlan:
    args, kwargs = normalize_inputs(example_inputs)
    calls, flops = _record_calls(model, args, kwargs)
    moved = _data_dependent(model, args, kwargs, calls)
    total = flops.get("", 0)
    region_flops, graphs, failed = {}, {}, {"": top_reason}

    def visit(prefix: str, module: torch.nn.Module) -> None:
        for name, child in module.named_children():
            path = f"{prefix}.{name}" if prefix else name
            if path not in calls or flops.get(path, 0) < MIN_REGION_FLOP_SHARE * total:
                continue  # never called, or too small to pay for its own engine
            first = calls[path][0]
            inputs = _as_inputs(*first)
            if path in moved:  # kept on the host: an engine would hold one data-dependent size
                captured, why = None, CaptureFailure(f"its input shapes depend on the data ({moved[path]} on "
                                                     f"another input); a fixed-shape engine would hold one")
            elif inputs is None:
                captured, why = None, CaptureFailure("called with positional and keyword tensors")
            else:
                captured, why = _region(child, inputs, calls[path])
            if why is None:
                region_flops[path], graphs[path] = flops.get(path, 0), captured
            else:
                failed[path] = why
                visit(path, child)

    visit("", model)
    root = type(model).__name__
    host = []
    for path, why in failed.items():
        inside = sum(f for r, f in region_flops.items() if path == "" or r.startswith(path + "."))
        host.append(HostRegion(f"{root}.{path}" if path else root, why.reason, why.where,
                               max(0, flops.get(path, 0) - inside)))
    return RegionPlan(root, tuple(graphs), region_flops, tuple(host), total, graphs)


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


def plan_to_dict(plan: RegionPlan) -> dict:
    return {"model": plan.model, "regions": list(plan.regions), "region_flops": plan.region_flops,
            "host": [h.__dict__ for h in plan.host], "total_flops": plan.total_flops}


def regions_page(plan: RegionPlan, compiled: Sequence[str] | None = None) -> dict:
    """The region table of the HTML page: compiled regions and host regions, with why."""
    total = plan.total_flops or 1
    names = list(plan.regions) if compiled is None else list(compiled)
    rows = [{"path": f"{plan.model}.{p}", "compiled": True, "share": plan.region_flops.get(p, 0) / total,
             "why": f"{plan.region_flops.get(p, 0) / total:.1%} of FLOPs"} for p in names]
    rows += [{"path": h.module, "compiled": False, "share": h.flops / total,
              "why": f"{h.reason}" + (f" at {h.source}" if h.source else "") + f"; {h.flops / total:.1%} of FLOPs"}
             for h in plan.host]
    return {"reason": f"{plan.model} cannot be captured whole at fixed shapes: archfit compiles its submodules and runs "
                      f"the rest of its Python on the host CPU", "regions": rows}


def plan_from_dict(d: dict) -> RegionPlan:
    return RegionPlan(d["model"], tuple(d["regions"]), {k: int(v) for k, v in d["region_flops"].items()},
                      tuple(HostRegion(**h) for h in d["host"]), int(d["total_flops"]))


