"""Variable input sizes at compile time: choose the buckets, trace one static-shape module per
bucket, find which output dims follow the padded input dims, and check that padding is safe."""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.utils import _pytree as pytree

from ..core.capture import capture, leaf_names, normalize_inputs, output_names
from ..core.cost import is_compute, node_flops
from ..core.validate import compare_outputs
from ..errors import ArchfitError, ValidationError, first_line
from .choose import BucketChoice, Buckets, choose_buckets
from .dispatch import BucketedModule, Padding


class _Inputs:
    """The example inputs, flat and by name, re-shaped to any size along the varying dims."""

    def __init__(self, model: torch.nn.Module, example_inputs: Any, buckets: Buckets | None):
        args, kwargs = normalize_inputs(example_inputs)
        self.flat, self.spec = pytree.tree_flatten((args, kwargs))
        self.names = leaf_names(model, args, kwargs)
        dims = buckets.dims if buckets is not None else {}
        unknown = [n for n in dims if n not in self.names]
        if unknown:
            raise ArchfitError(f"buckets: no input named {unknown[0]!r}; the inputs are {', '.join(self.names)}")
        self.varying = {}
        for n, d in dims.items():
            i = self.names.index(n)
            rank = self.flat[i].dim()
            if not -rank <= d < rank:
                raise ArchfitError(f"buckets: input {n!r} has {rank} dims, so dim {d} cannot vary; name one of "
                                   f"0..{rank - 1}")
            self.varying[i] = d % rank
        self.pad = {n: (buckets.pad_values.get(n, 0) if buckets else 0) for n in self.names}

    def at(self, size: int | None = None, batch: int | None = None) -> list[torch.Tensor]:
        """Inputs with the varying dims at `size` and dim 0 at `batch`. Growing repeats the
        example's own values (so a token sequence stays a plausible one and a mask stays 1)."""
        out = []
        for i, t in enumerate(self.flat):
            if size is not None and i in self.varying:
                t = _tile(t, self.varying[i], size)
            if batch is not None:
                t = _tile(t, 0, batch)
            out.append(t.contiguous())
        return out

    def padded(self, flat: Sequence[torch.Tensor], size: int | None) -> list[torch.Tensor]:
        """Flat inputs with the varying dims padded with the pad values (or cut) to `size`, as a
        bucketed module pads a call (unlike `at`, which repeats the example's values)."""
        from .dispatch import resize

        if size is None:
            return list(flat)
        return [resize(t, self.varying[i], size, self.pad[self.names[i]]) if i in self.varying else t
                for i, t in enumerate(flat)]

    def sets_at(self, sets: Any, size: int | None, batch: int | None, what: str) -> list | None:
        """Input sets (calibration, validation) at a bucket's shapes: padded (or cut) to `size`,
        dim 0 at `batch` (rows repeated or cut) when the batch is compiled too. None stays None."""
        if sets is None:
            return None
        from ..core.sets import input_sets

        out = []
        for flat in input_sets(sets, self.spec, what):
            fitted = [_tile(t, 0, batch) if batch is not None and t.dim() else t for t in self.padded(flat, size)]
            out.append(self.structured([t.contiguous() for t in fitted]))
        return out

    def structured(self, flat: Sequence[torch.Tensor]) -> Any:
        """Flat tensors back in the form trace takes: a dict of keyword inputs or a tuple."""
        args, kwargs = pytree.tree_unflatten(list(flat), self.spec)
        return kwargs if kwargs else tuple(args)

    def call(self, model, flat: Sequence[torch.Tensor]) -> list:
        args, kwargs = pytree.tree_unflatten(list(flat), self.spec)
        try:
            with torch.no_grad():
                return pytree.tree_flatten(model(*args, **kwargs))[0]
        except ArchfitError:
            raise
        except Exception as e:  # noqa: BLE001 - the model refusing the resized inputs, named
            shapes = ", ".join(f"{n} {tuple(t.shape)}" for n, t in zip(self.names, flat))
            raise ArchfitError(f"buckets: the model fails in eager PyTorch on the inputs resized to {shapes} "
                               f"({type(e).__name__}: {first_line(e, 150)}); inputs whose sizes vary together must "
                               f"all be named in dims= (CLI: one --vary each)") from e


def _tile(t: torch.Tensor, dim: int, size: int) -> torch.Tensor:
    reps = -(-size // t.shape[dim])
    return t.repeat(*[reps if d == dim else 1 for d in range(t.dim())]).narrow(dim, 0, size)


def following_dims(outs_a: Sequence, outs_b: Sequence, a: int, b: int) -> tuple[tuple[int, ...], ...]:
    """Per output, the dims whose size is `a` when the input is at `a` and `b` at `b`: shape
    propagation by running the model at two sizes, instead of asking the user."""
    out = []
    for x, y in zip(outs_a, outs_b):
        if not isinstance(x, torch.Tensor):
            out.append(())
            continue
        out.append(tuple(d for d in range(x.dim()) if x.shape[d] == a and y.shape[d] == b))
    return tuple(out)


def flops_cost(model: torch.nn.Module, inputs: _Inputs, top: int) -> Callable[[int], float]:
    """Estimated FLOPs per input as a function of size: counted on graphs captured at three sizes,
    fitted exactly by a quadratic (linear layers grow linearly with length, attention with its square)."""
    sizes = sorted({max(1, top), max(1, top // 2), max(1, top // 4)})
    flops = []
    for s in sizes:
        gm = capture(model, inputs.structured(inputs.at(s))).graph_module
        flops.append(float(sum(node_flops(n) for n in gm.graph.nodes if is_compute(n))))
    coef = np.polyfit(sizes, flops, deg=min(2, len(sizes) - 1))
    grid = np.arange(1, top + 1)
    values = np.maximum.accumulate(np.maximum(np.polyval(coef, grid), 1.0))  # never decreasing, positive
    return lambda s: float(values[min(max(int(s), 1), top) - 1])


def choose(buckets: Buckets, cost: Callable[[int], float], weight_bytes: int) -> tuple[tuple[int, ...], BucketChoice | None]:
    if buckets.sizes is not None:
        return tuple(sorted(set(buckets.sizes))), None
    max_buckets = buckets.max_buckets
    if buckets.max_bytes is not None:
        max_buckets = max(1, min(max_buckets, buckets.max_bytes // max(weight_bytes, 1)))
    choice = choose_buckets(buckets.counts(), max_buckets, cost, start=1, max_length=buckets.top())
    return choice.boundaries, choice


def _check_padding(model, module: BucketedModule, inputs: _Inputs, sizes: tuple[int, ...], precision: str):
    """For each bucket, run the shortest length it serves (the most padding) through the bucketed
    module and eager PyTorch at that exact length; real positions must agree. At a lossy
    precision (int8: judged by its gate, never elementwise) padding safety, a property of the
    model, is checked on eager PyTorch padded as the module pads, at float tolerance."""
    from ..targets.base import LOSSY
    from .dispatch import cut

    checks = []
    out_names = output_names(module.out_spec, len(module.padding.follow))
    lossy = precision in LOSSY
    for prev, bucket in zip((0,) + sizes[:-1], sizes):
        length = prev + 1
        if length == bucket:
            continue
        flat = inputs.at(length)
        want = inputs.call(model, flat)
        if lossy:
            got = [cut(o, f, length) if isinstance(o, torch.Tensor) else o
                   for o, f in zip(inputs.call(model, inputs.padded(flat, bucket)), module.padding.follow)]
        else:
            got = inputs.call(module, flat)
        worst = 0.0
        for c in compare_outputs(out_names, got, want, "fp32" if lossy else precision):
            if not c.ok:
                raise ValidationError(
                    f"the model is not padding-safe: output {c.output!r} differs from eager PyTorch at real positions "
                    f"(max abs error {c.max_abs:.3e} > {c.tolerance:.3e}) when length {length} is padded to bucket "
                    f"{bucket} with pad values {dict((n, inputs.pad[n]) for n in module.padding.dims)}; pass the "
                    f"attention mask as an input and pad it with 0, set pad_values, or use one bucket per size"
                )
            worst = max(worst, c.max_abs)
        checks.append((length, bucket, worst))
    return tuple(checks)


def trace_buckets(trace_one: Callable, model: torch.nn.Module, example_inputs: Any, buckets: Buckets | None,
                  dynamic_batch: bool, precision: str, check_padding: bool = True, progress=None,
                  sets: dict[str, Any] | None = None, batch_sizes: Sequence[int] = ()) -> BucketedModule:
    """One static-shape module per bucket, compiled by trace_one(example_inputs, **sets at its
    shapes) (archfit.trace): `sets` {keyword: input sets} (int8's calibration, a gate's validation
    inputs), each padded or cut to every bucket. With a dynamic batch, `batch_sizes` smaller
    than the example's are compiled too, per bucket."""
    inputs = _Inputs(model, example_inputs, buckets)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    if buckets is not None:
        top = buckets.top()
        cost = buckets.cost or (flops_cost(model, inputs, top) if buckets.sizes is None else float)
        sizes, choice = choose(buckets, cost, weight_bytes)
        # Output dims that follow the varying size, from the model run at two sizes
        a, b = top, max(1, top - 1) if top > 1 else 2
        follow = following_dims(inputs.call(model, inputs.at(a)), inputs.call(model, inputs.at(b)), a, b)
    else:
        sizes, choice, follow = (None,), None, ()
    batch_follow = None
    if dynamic_batch:
        n = inputs.flat[0].shape[0] if inputs.flat[0].dim() else 0
        size = sizes[-1]
        batch_follow = following_dims(inputs.call(model, inputs.at(size, n)), inputs.call(model, inputs.at(size, n + 1)),
                                      n, n + 1)
        missing = [i for i, f in enumerate(batch_follow) if not f]
        if missing:
            raise ArchfitError(f"dynamic_batch: output #{missing[0]} does not carry the batch in any dim, so batches "
                               f"cannot be split and joined; trace without dynamic_batch")
    full = inputs.flat[0].shape[0] if dynamic_batch and inputs.flat[0].dim() else None
    smaller = sorted({int(b) for b in batch_sizes})
    if smaller and (full is None or smaller[0] < 1 or smaller[-1] >= full):
        raise ArchfitError(f"batch_sizes {tuple(smaller)}: with dynamic_batch, row counts from 1 to below the "
                           f"example's batch ({full or 'none: pass dynamic_batch=True'}); the example's is compiled "
                           f"anyway")
    modules, fewer = {}, {}
    for s in sizes:
        if progress is not None and s is not None:
            progress(f"bucket {s} ({sizes.index(s) + 1}/{len(sizes)})")
        key = s if s is not None else 0
        for rows in [full, *smaller]:
            flat = inputs.at(s, None if rows == full else rows)
            at_bucket = {k: inputs.sets_at(v, s, rows, k) for k, v in (sets or {}).items()}
            compiled = trace_one(inputs.structured(flat), **at_bucket)
            if rows == full:
                modules[key] = compiled
            else:
                fewer[(key, rows)] = compiled
    if buckets is None:
        follow = tuple(() for _ in batch_follow)
    padding = Padding({n: int(d) for n, d in (buckets.dims if buckets else {}).items()},
                      {n: float(v) for n, v in (buckets.pad_values if buckets else {}).items()}, follow, batch_follow)
    module = BucketedModule(modules, padding, choice, fewer=fewer)
    if buckets is None or not check_padding:
        return module
    return BucketedModule(modules, padding, choice, _check_padding(model, module, inputs, tuple(sizes), precision),
                          fewer=fewer)


