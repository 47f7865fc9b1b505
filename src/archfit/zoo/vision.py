"""torchvision classifiers and SSD, random weights."""
from __future__ import annotations

import torch
import torchvision
from torchvision.models.detection.image_list import ImageList


def _classifier(factory, tiny: bool):
    # tiny: same architecture, smaller image and head, so tests stay fast on 2 cores
    size, classes = (64, 10) if tiny else (224, 1000)
    return factory(weights=None, num_classes=classes), (torch.randn(1, 3, size, size),)


def resnet18(tiny: bool):
    return _classifier(torchvision.models.resnet18, tiny)


def resnet50(tiny: bool):
    return _classifier(torchvision.models.resnet50, tiny)


def resnext50_32x4d(tiny: bool):
    return _classifier(torchvision.models.resnext50_32x4d, tiny)


def vgg16(tiny: bool):
    if tiny:  # VGG's classifier expects 7x7 after its pool; 64x64 input is adaptive-pooled to it
        model = torchvision.models.vgg16(weights=None, num_classes=10)
        model.classifier = torch.nn.Sequential(torch.nn.Linear(512 * 7 * 7, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
        return model, (torch.randn(1, 3, 64, 64),)
    return _classifier(torchvision.models.vgg16, tiny)


class SSDUpToNMS(torch.nn.Module):
    """torchvision's SSD300-VGG16 up to its data-dependent post-processing: backbone, heads, box
    decoding against the (fixed) anchors and class softmax. Score filtering and NMS stay outside
    (their output sizes depend on the data)."""

    def __init__(self, ssd, size: int):
        super().__init__()
        self.backbone, self.head, self.box_coder = ssd.backbone, ssd.head, ssd.box_coder
        with torch.no_grad():  # anchors depend only on the fixed image size
            image = torch.zeros(1, 3, size, size)
            feats = list(ssd.backbone(image).values())
            anchors = ssd.anchor_generator(ImageList(image, [(size, size)]), feats)[0]
        self.register_buffer("anchors", anchors)

    def forward(self, images: torch.Tensor):
        head = self.head(list(self.backbone(images).values()))
        deltas, logits = head["bbox_regression"], head["cls_logits"]
        boxes = torch.stack([self.box_coder.decode_single(d, self.anchors) for d in deltas.unbind(0)])
        return boxes, torch.softmax(logits, dim=-1)


def ssd300_vgg16(tiny: bool):
    # The VGG16 backbone and SSD extras need 300x300; tiny keeps them and shrinks the class head.
    classes = 5 if tiny else 91
    ssd = torchvision.models.detection.ssd300_vgg16(weights=None, weights_backbone=None, num_classes=classes)
    return SSDUpToNMS(ssd.eval(), 300), (torch.randn(1, 3, 300, 300),)
