"""Sets of inputs, as users hold them: validation and calibration data come as one input set
structured like the example inputs, a list of them, or any iterable of them (a DataLoader, a
generator). Each is checked against the example's structure and flattened the way capture
flattened the example, so every stage after takes a list of flat input tuples."""
from __future__ import annotations

from typing import Any

import torch
from torch.utils import _pytree as pytree

from ..errors import InputError
from .capture import normalize_inputs

MAX_SET = 100_000  # inputs in one set, at most: a set is held in memory


def _flat(value: Any) -> tuple[list, Any] | None:
    try:
        args, kwargs = normalize_inputs(value)
    except Exception:  # noqa: BLE001 - not an input set (an iterable of them, or something else)
        return None
    return pytree.tree_flatten((args, kwargs))


def _describe(spec) -> str:
    return str(pytree.tree_unflatten(["t"] * spec.num_leaves, spec)).replace("'t'", "tensor")[:160]


def input_sets(value: Any, in_spec: pytree.TreeSpec, what: str) -> list[tuple[torch.Tensor, ...]]:
    """`value` (one input set, or a list or iterable of them) as flat input tuples, each checked
    against `in_spec`, the example inputs' structure; one line naming the input set at fault otherwise."""
    one = _flat(value)
    if one is not None and one[1] == in_spec:
        return [tuple(one[0])]
    if isinstance(value, (torch.Tensor, dict)) or not hasattr(value, "__iter__"):
        got = _describe(one[1]) if one is not None else type(value).__name__
        raise InputError(f"{what}: structured as {got}, not as the example inputs ({_describe(in_spec)}); give one "
                         f"input set like them, or a list (or any iterable) of such sets")
    sets = []
    for i, item in enumerate(value):
        flat = _flat(item)
        if flat is None or flat[1] != in_spec:
            got = _describe(flat[1]) if flat is not None else type(item).__name__
            raise InputError(f"{what}[{i}]: structured as {got}, not as the example inputs ({_describe(in_spec)}); "
                             f"each input set must be structured like them")
        if len(sets) == MAX_SET:
            raise InputError(f"{what}: more than {MAX_SET} input sets; a set is held in memory: pass a sample")
        sets.append(tuple(flat[0]))
    if not sets:
        raise InputError(f"{what}: no input set in it; give at least one, structured like the example inputs")
    return sets
