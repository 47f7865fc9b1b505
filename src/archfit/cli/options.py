"""What compile's options name, made into archfit's objects: input sets read from .npz files
(--calibration, --validation), buckets (--vary, --buckets, --lengths, --pad), packing (--pack and
its options) and a batch compiled for dynamic batching (--batch)."""
from __future__ import annotations

import json
from pathlib import Path


def with_batch(inputs, batch: int, dynamic_batch: bool):
    """The example with `batch` rows in dim 0 of every tensor (its rows repeated in turn)."""
    import torch
    from torch.utils import _pytree as pytree

    from ..errors import InputError

    if not dynamic_batch or batch < 1:
        raise InputError(f"--batch {batch}: give a positive batch with --dynamic-batch (it sets the batch compiled "
                         f"for requests of any batch size)")

    def rows(t):
        if not isinstance(t, torch.Tensor) or t.dim() == 0:
            return t
        return t[torch.arange(batch) % t.shape[0]]

    return pytree.tree_map(rows, inputs)


def read_sets(path: Path, model, example, what: str) -> list:
    """Input sets from files, structured like the example inputs: an .npz whose arrays are named
    by input (as `archfit inspect` and reports name them) and stacked over the sets, or a folder of
    .npz files holding one set each."""
    import numpy as np
    import torch
    from torch.utils import _pytree as pytree

    from ..core.capture import leaf_names, normalize_inputs
    from ..errors import InputError

    args, kwargs = normalize_inputs(example)
    leaves, spec = pytree.tree_flatten((args, kwargs))
    names = leaf_names(model, args, kwargs) if isinstance(model, torch.nn.Module) else list(kwargs)
    files = sorted(path.glob("*.npz")) if path.is_dir() else [path]
    if not files or not all(f.is_file() for f in files):
        raise InputError(f"{what} {path}: no .npz file there")
    sets = []
    for f in files:
        try:
            with np.load(f, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
        except (OSError, ValueError) as e:
            raise InputError(f"{what} {f}: cannot read it as .npz ({type(e).__name__}: {str(e)[:100]})") from None
        missing = [n for n in names if n not in arrays]
        if missing:
            raise InputError(f"{what} {f}: no array named {missing[0]!r}; it holds {', '.join(arrays) or 'none'}, "
                             f"the model takes {', '.join(names)}")
        stacked = path.is_file()  # one file: every array stacked over the sets
        count = len(arrays[names[0]]) if stacked else 1
        for i in range(count):
            flat = [torch.from_numpy(np.ascontiguousarray(arrays[n][i] if stacked else arrays[n])).to(leaf.dtype)
                    for n, leaf in zip(names, leaves)]
            a, kw = pytree.tree_unflatten(flat, spec)
            sets.append(kw if not a else a)
    return sets


def _read_lengths(lengths: Path) -> dict:
    """--lengths FILE: a JSON list of sizes seen ({"sample": ...}) or a histogram ({"histogram": ...})."""
    from ..errors import InputError

    if lengths.stat().st_size > 64 * 2**20:
        raise InputError(f"--lengths {lengths}: over 64 MiB; give a histogram ({{\"counts\": [...]}}) instead")
    data = json.loads(lengths.read_text())
    if isinstance(data, list):
        return {"sample": tuple(int(x) for x in data)}
    start = int(data.get("lengths_start_at", 1))
    return {"histogram": (0.0,) * (start - 1) + tuple(float(x) for x in data["counts"])}


def packing_of(max_len: int, rows: int, outputs: list, pool, vary: list, sizes: str | None, lengths: Path | None,
             max_sizes: int, row_counts: tuple[int, ...] = ()):
    """--pack and its options as an archfit.Packing."""
    from .. import Packing
    from ..errors import ArchfitError, InputError, first_line

    if vary:
        raise InputError("--pack makes its own row lengths: give --buckets or --lengths for them, not --vary")
    try:
        kw = {"sizes": tuple(sorted({int(x) for x in sizes.split(",")} | {max_len}))} if sizes else {}
        if lengths is not None:
            kw |= _read_lengths(lengths)
        return Packing(max_len, rows, outputs=tuple(outputs) or None, pool=pool, max_sizes=max_sizes,
                       row_counts=row_counts, **kw)
    except ArchfitError:  # archfit's own one line (OptionError) as it is
        raise
    except (ValueError, OSError, KeyError, TypeError, AttributeError, RecursionError) as e:
        raise InputError(f"packing options: {type(e).__name__}: {first_line(e, 200)}") from None


def buckets_of(vary: list, sizes: str | None, lengths: Path | None, max_buckets: int, pad: list):
    """--vary/--buckets/--lengths/--pad as an archfit.Buckets (None when nothing varies)."""
    from .. import Buckets
    from ..errors import ArchfitError, InputError, first_line

    if not vary:
        if sizes or lengths or pad:
            raise InputError("--buckets, --lengths and --pad need --vary NAME:DIM naming the input dims that vary")
        return None
    dims, pad_values = {}, {}
    for item in vary:
        name, _, dim = item.rpartition(":")
        if not name or not dim.lstrip("-").isdigit():
            raise InputError(f"--vary {item!r} must be NAME:DIM, e.g. input_ids:1")
        dims[name] = int(dim)
    for item in pad:
        name, _, value = item.partition("=")
        try:
            pad_values[name] = float(value)
        except ValueError:
            raise InputError(f"--pad {item!r} must be NAME=NUMBER") from None
    if (sizes is None) == (lengths is None):
        raise InputError("with --vary, give either --buckets SIZES or --lengths FILE")
    try:
        if sizes is not None:
            return Buckets(dims, sizes=tuple(int(x) for x in sizes.split(",")), pad_values=pad_values)
        return Buckets(dims, max_buckets=max_buckets, pad_values=pad_values, **_read_lengths(lengths))
    except ArchfitError:  # archfit's own one line (OptionError) as it is
        raise
    except (ValueError, OSError, KeyError, TypeError, AttributeError, RecursionError) as e:
        raise InputError(f"bucket options: {type(e).__name__}: {first_line(e, 200)}") from None
