"""Inputs of imported models, matched to the model's input names: one way for every frontend
(example inputs at import, the imported module's forward, calls of the compiled module)."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..errors import ModelError


def by_name(names: list[str] | tuple[str, ...], given: dict, what: str, error: type = ModelError) -> dict:
    """`given` in the order of `names`; one line naming the first unknown or missing input unless
    it has exactly those names."""
    unknown = [k for k in given if k not in names]
    missing = [n for n in names if n not in given]
    if unknown or missing:
        raise error(f"{what} takes inputs {', '.join(map(repr, names))}; got {', '.join(map(repr, given)) or 'none'}: "
                    f"{'unknown ' + repr(unknown[0]) if unknown else 'missing ' + repr(missing[0])}; name the inputs "
                    f"as the model does (a dict by name, or arrays in that order)")
    return {n: given[n] for n in names}


def as_dict(names: list[str] | tuple[str, ...], inputs: Any, what: str, error: type = ModelError) -> dict:
    """A dict by input name, a sequence in input order, or one array (a one-input model), as a
    dict by name (not yet checked against the names: see by_name)."""
    if isinstance(inputs, dict):
        return dict(inputs)
    if isinstance(inputs, (list, tuple)):
        if len(inputs) != len(names):
            raise error(f"{what} takes {len(names)} input(s) ({', '.join(map(repr, names))}), got {len(inputs)}; "
                        f"pass one array per input, or a dict by name")
        return dict(zip(names, inputs))
    if len(names) != 1:
        raise error(f"{what} takes {len(names)} inputs ({', '.join(map(repr, names))}); pass a dict by name")
    return {names[0]: inputs}


def as_torch(value) -> torch.Tensor:
    """A numpy array, tf.Tensor or torch tensor as a torch tensor (numpy memory shared)."""
    if isinstance(value, torch.Tensor):
        return value
    if hasattr(value, "numpy") and not isinstance(value, np.ndarray):  # a tf.Tensor
        value = value.numpy()
    return torch.from_numpy(np.ascontiguousarray(value))
