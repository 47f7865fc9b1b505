"""`torchvision:NAME` and `timm:NAME` on the command line: the architecture from the library users
know, random weights or `--weights FILE` (a state dict in safetensors, or a torch file read with
weights_only=True: tensors only, no code runs)."""
from __future__ import annotations

import difflib
import os
from typing import Any

import torch

from ..errors import ModelError, first_line

LIBRARIES = ("torchvision", "timm")


def is_library_model(spec: str) -> bool:
    return ":" in spec and spec.split(":", 1)[0] in LIBRARIES


def _close(name: str, names: list[str]) -> str:
    near = difflib.get_close_matches(name, names, n=4, cutoff=0.5)
    return f" (close names: {', '.join(near)})" if near else ""


def _torchvision(name: str) -> tuple[torch.nn.Module, Any]:
    import torchvision

    names = torchvision.models.list_models()
    if name not in names:
        raise ModelError(f"torchvision has no model {name!r}{_close(name, names)}; torchvision.models.list_models() "
                         f"lists them")
    model = torchvision.models.get_model(name, weights=None)
    if name in torchvision.models.list_models(module=torchvision.models.detection):
        return model, ([torch.rand(3, 320, 320)],)  # detectors take a list of images
    size = 299 if name.startswith("inception") else 224
    return model, (torch.rand(1, 3, size, size),)


def _timm(name: str) -> tuple[torch.nn.Module, Any]:
    try:
        import timm
    except ImportError as e:
        raise ModelError("timm:NAME needs timm: pip install timm") from e
    names = timm.list_models()
    if name not in names:
        raise ModelError(f"timm has no model {name!r}{_close(name, names)}; timm.list_models() lists them")
    model = timm.create_model(name, pretrained=False)
    channels, height, width = model.pretrained_cfg.get("input_size", (3, 224, 224))
    return model, (torch.rand(1, channels, height, width),)


def read_weights(path: str) -> dict[str, torch.Tensor]:
    """A state dict from safetensors, or from a torch file loaded with weights_only=True (a
    checkpoint dict holding it under 'state_dict' or 'model' is unwrapped)."""
    if not os.path.isfile(path):
        raise ModelError(f"--weights {path}: no such file")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - pickle, zip and safetensors errors vary; one line
        raise ModelError(f"--weights {path}: not a state dict archfit can read safely ({first_line(e, 160)}); save "
                         f"it with safetensors or torch.save(model.state_dict(), ...)") from e
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"--weights {path}: expected a dict of tensors (a state dict), got {type(state).__name__}")
    return state


def load_library_model(spec: str, weights: str | None = None) -> tuple[torch.nn.Module, Any, str]:
    library, name = spec.split(":", 1)
    model, inputs = (_torchvision if library == "torchvision" else _timm)(name)
    if weights is not None:
        state = read_weights(weights)
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            what = "; ".join(filter(None, [missing and f"missing {', '.join(missing[:3])}" + (" ..." if len(missing) > 3
                                                                                               else ""),
                                           unexpected and f"unexpected {', '.join(unexpected[:3])}"
                                           + (" ..." if len(unexpected) > 3 else "")]))
            raise ModelError(f"--weights {weights} does not fit {spec}: {what}; give the state dict saved from "
                             f"this architecture")
    return model.eval(), inputs, spec + ("" if weights else " (random weights)")
