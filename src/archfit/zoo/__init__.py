"""Reference models built from configs with random weights (nothing is downloaded).

Each entry builds `(model, example_inputs)` at full size, or `tiny=True`: the same
architecture shrunk for tests."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from . import toy, transformers_models, vision


@dataclass(frozen=True)
class ZooModel:
    name: str
    family: str
    description: str
    build: Callable[[bool], tuple[torch.nn.Module, Any]]  # build(tiny) -> (model, example_inputs)


_ZOO: dict[str, ZooModel] = {}


def _add(name: str, family: str, description: str, build) -> None:
    _ZOO[name] = ZooModel(name, family, description, build)


_add("bert-base", "language", "BERT-base uncased (transformers config), seq 128", transformers_models.bert_base)
_add("resnet18", "vision", "ResNet-18 (torchvision), 224x224", vision.resnet18)
_add("resnet50", "vision", "ResNet-50 (torchvision), 224x224", vision.resnet50)
_add("mlp-custom-op", "toy", "MLP with a custom op no target lowers, in the middle", toy.mlp_custom_op)


def names() -> list[str]:
    return sorted(_ZOO)


def get(name: str) -> ZooModel:
    from ..errors import ModelError

    if name not in _ZOO:
        raise ModelError(f"no built-in model named {name!r}; built-in models: {', '.join(names())}")
    return _ZOO[name]


def build(name: str, tiny: bool = False, seed: int = 0) -> tuple[torch.nn.Module, Any]:
    torch.manual_seed(seed)
    model, inputs = get(name).build(tiny)
    return model.eval(), inputs


__all__ = ["ZooModel", "build", "get", "names"]
