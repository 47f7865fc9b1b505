"""torchvision classifiers, random weights."""
from __future__ import annotations

import torch
import torchvision


def _classifier(factory, tiny: bool):
    # tiny: same architecture, smaller image and head, so tests stay fast on 2 cores
    size, classes = (64, 10) if tiny else (224, 1000)
    return factory(weights=None, num_classes=classes), (torch.randn(1, 3, size, size),)


def resnet18(tiny: bool):
    return _classifier(torchvision.models.resnet18, tiny)


def resnet50(tiny: bool):
    return _classifier(torchvision.models.resnet50, tiny)
