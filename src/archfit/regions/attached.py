"""A model with compiled regions swapped in for some of its submodules: the rest of its forward()
is the model's own Python, run on the host. Saved files of such models hold the regions only, and
attach them at load time to the model the user passes, checked by class and weights."""
from __future__ import annotations

import hashlib
from typing import Any

import torch
from torch.utils import _pytree as pytree

from ..core.accuracy import Accuracy
from ..core.capture import normalize_inputs
from ..core.compile import share_cores, shared_copy
from ..core.module import ArchfitModule, CompiledModule
from ..core.validate import (TOLERANCES, InputCheck, Validation, check_gate, compare_outputs, flat_outputs,
                              random_like)
from ..errors import ArtifactError, ValidationError
from .plan import RegionPlan, plan_from_dict, plan_to_dict, regions_page, render_regions


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


class _Guarded(torch.nn.Module):
    """A fixed-shape region in the model's tree. A call at other input shapes than it was
    compiled at (a size that follows the data, which planning did not see move: see
    plan._data_dependent) runs the submodule in PyTorch, said once per region, instead of
    failing the whole model's call on one image."""

    def __init__(self, path: str, compiled: "CompiledModule", original: torch.nn.Module):
        super().__init__()
        self.path, self.compiled, self.original = path, compiled, original
        self.shapes = [tuple(spec.shape) for spec in compiled.inputs]
        self.warned = False

    def forward(self, *args, **kwargs):
        given = [tuple(t.shape) for t in pytree.tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        if given == self.shapes:
            return self.compiled(*args, **kwargs)
        if not self.warned:
            import warnings

            moved = next(((a, b) for a, b in zip(self.shapes, given) if a != b), (self.shapes, given))
            warnings.warn(f"region {self.path} was compiled at input shape {list(moved[0])}, called at "
                          f"{list(moved[1])}: this call runs it in PyTorch (its size follows the data; trace with "
                          f"an example of the size most calls have)",
                          stacklevel=2)
            self.warned = True
        return self.original(*args, **kwargs)


class AttachedModule(ArchfitModule):
    """The model with its compiled regions swapped in; the rest of its forward() is its own
    Python, run on the host. Returned by archfit.trace for models that cannot be captured whole.
    Its report is the one of the region holding the most FLOPs (`reports` has every region's)."""

    kind = "attached"

    def __init__(self, model: torch.nn.Module, regions: dict[str, ArchfitModule], plan: RegionPlan,
                 digests: dict[str, str] | None = None, validation=None, manifest: dict | None = None):
        largest = regions[max(regions, key=lambda p: plan.region_flops.get(p, 0))]
        super().__init__(largest.target, largest.precision, largest.emulated, largest.report, manifest)
        # a copy of the module tree sharing every weight: swapping submodules never touches the
        # user's model and never duplicates its memory
        self.model = shared_copy(model)
        self.model.eval()
        for path, compiled in regions.items():
            original = self.model.get_submodule(path)
            _set_submodule(self.model, path, _Guarded(path, compiled, original)
                           if isinstance(compiled, CompiledModule) else compiled)
        share_cores(self)  # the model's own Python (e.g. NMS) computes between the regions' engine calls
        self.regions = dict(regions)
        self.plan = plan
        self.model_class = class_path(model)
        self.digests = digests or {p: weights_digest(model.get_submodule(p)) for p in regions}
        self.validation = validation

    @property
    def reports(self) -> dict:
        return {p: m.report for p, m in self.regions.items()}

    def forward(self, *args, **kwargs):
        with torch.no_grad():
            return self.model(*args, **kwargs)

    def summary(self) -> str:
        lines = [render_regions(self.plan, list(self.regions))]
        v = self.validation
        if v is not None:
            lines.append(f"end to end vs eager PyTorch ({v.precision}): {'PASS' if v.ok else 'FAIL'}, max rel error "
                         f"{v.max_rel:.2e}" + (f" (the {v.gate} gate decides)" if v.gate else ""))
            lines += v.gate_lines()
        return "\n".join(lines)

    def page(self) -> dict:
        sections = [(f"{self.plan.model}.{p}", [r]) for p, r in self.reports.items() if r is not None]
        return {"sections": sections, "regions": regions_page(self.plan, list(self.regions))}

    def file_components(self) -> dict[str, ArchfitModule]:
        return {f"region_{i}": part for i, part in enumerate(self.regions.values())}

    def file_inputs(self, components: dict[str, dict]) -> list[dict]:
        return []  # the regions' inputs are the model's own intermediates, not the file's

    def file_meta(self) -> dict:
        return {"class": self.model_class, "digests": self.digests, "plan": plan_to_dict(self.plan),
                "regions": list(self.regions)}

    @classmethod
    def check_loadable(cls, meta: dict, model: torch.nn.Module | None, source) -> None:
        check_attachable(meta, model, source)

    @classmethod
    def from_file(cls, components, meta, manifest, model=None, source="the file") -> "AttachedModule":
        regions = {path: components[f"region_{i}"] for i, path in enumerate(meta["regions"])}
        return attach(meta, model, regions, source, plan_from_dict(meta["plan"]), manifest)

    @classmethod
    def describe_file(cls, manifest: dict) -> list[str]:
        meta = manifest["meta"]
        return ([f"needs the model's Python code: {meta['class']} (its compiled regions attach to it: "
                 f"archfit.load(path, model=...), CLI: archfit run FILE --model NAME)",
                 f"compiled regions: {', '.join(meta['regions'])}"]
                + [f"host region: {h['module']}: {h['reason']}" + (f" at {h['source']}" if h["source"] else "")
                   for h in meta["plan"]["host"]])

    def extra_repr(self) -> str:
        return f"model={self.model_class}, compiled regions={list(self.regions)}, target={self.target!r}"


def check_attachable(meta: dict, model: torch.nn.Module | None, path) -> None:
    """Refuse, before any engine loads, a model that is missing or of another class."""
    wanted = meta["class"]
    if model is None:
        raise ArtifactError(f"{path} holds compiled regions of {wanted}; the rest of its forward() is Python that "
                            f"archfit does not store: pass the model to attach to, archfit.load(path, model=...) "
                            f"(CLI: archfit run FILE --model NAME)")
    if class_path(model) != wanted:
        raise ArtifactError(f"{path} was compiled from a {wanted}, not the {class_path(model)} given; pass the "
                            f"model it was compiled from")


def attach(meta: dict, model: torch.nn.Module | None, regions: dict[str, ArchfitModule], path, plan: RegionPlan,
           manifest: dict | None = None) -> AttachedModule:
    """Rebuild an AttachedModule at load time around the user's model."""
    check_attachable(meta, model, path)
    digests = meta["digests"]
    modules = dict(model.named_modules())  # looked up by name, never by attribute walks on file strings
    for p in regions:
        sub = modules.get(p) if p else None
        if sub is None:
            raise ArtifactError(f"{path}: the model given has no submodule {str(p)[:80]!r}; pass the model it was "
                                f"compiled from")
        if weights_digest(sub) != digests.get(p):
            raise ArtifactError(f"{path}: the weights of {meta['class']}.{p} differ from the ones compiled into the "
                                f"file; pass the model with the weights it was compiled with, or compile again")
    return AttachedModule(model, regions, plan, digests, manifest=manifest)


def _host_code(plan: RegionPlan) -> str:
    """Where the host Python that acts on the compiled regions' values is (NMS, a score filter):
    what turns rounding-sized differences into different outputs."""
    at = next((h for h in plan.host if h.source), None)
    return f"; the host code deciding on the compiled values: {at.module} at {at.source}" if at else ""


def validate_attached(model: torch.nn.Module, attached: AttachedModule, example_inputs: Any, precision: str,
                      accuracy: Accuracy | None = None):
    """The whole model against eager PyTorch on the example and one random input, each output's
    values compared as a multiset (see compare_outputs), or by the task gate when one is given
    (the regions themselves were validated elementwise: a gate reads the whole model's outputs)."""
    atol, rtol = TOLERANCES[precision]
    args, kwargs = normalize_inputs(example_inputs)
    flat, spec = pytree.tree_flatten((args, kwargs))
    checks, metrics = [], []
    for label, values in (("example inputs", flat), ("random inputs", random_like(flat))):
        a, kw = pytree.tree_unflatten(list(values), spec)
        with torch.no_grad():
            want_out, got_out = model(*a, **kw), attached(*a, **kw)
        want, got = flat_outputs(want_out), flat_outputs(got_out)
        outs = compare_outputs([f"output {i}" for i in range(len(want))], got, want, precision, unordered=True)
        checks.append(InputCheck(label, outs))
        if accuracy is not None:
            metrics.append(check_gate(accuracy, got_out, want_out, label, precision,
                                      lambda: _host_code(attached.plan), prefix=f"{attached.model_class}: "))
            continue
        bad = next((o for o in outs if not o.ok), None)
        if bad is not None:
            raise ValidationError(
                f"{attached.model_class}: {bad.output} differs from eager PyTorch on the {label} (max abs error "
                f"{bad.max_abs:.3e} > {bad.tolerance:.3e}, or another shape: data-dependent post-processing such as "
                f"NMS amplifies small differences{_host_code(attached.plan)}); use precision='fp32', a task gate "
                f"(accuracy='detection') or force ops to the CPU with force_cpu=[...]")
    return Validation(precision, atol, rtol, tuple(checks), accuracy.name if accuracy else None, tuple(metrics))
