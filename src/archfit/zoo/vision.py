"""torchvision classifiers and SSD, random weights."""
from __future__ import annotations

import torch
import torchvision


def _classifier(factory, tiny: bool):
    # tiny: same architecture, smaller image and head, so tests stay fast on 2 cores
    size, classes = (64, 10) if tiny else (224, 1000)
    return factory(weights=None, num_classes=classes), (torch.randn(1, 3, size, size),)


def resnet18(tiny: bool):
    return _classifier(torchvision.models.resnet18, tiny)


def _bottleneck_net(factory, tiny: bool, **groups):
    """ResNet-50 / ResNeXt-50; tiny: the same Bottleneck blocks (grouped for ResNeXt) and stage
    widths, one block a stage instead of 3-4-6-3, so its capture is a quarter of the nodes."""
    if not tiny:
        return _classifier(factory, tiny)
    from torchvision.models.resnet import Bottleneck, ResNet

    return ResNet(Bottleneck, [1, 1, 1, 1], num_classes=10, **groups), (torch.randn(1, 3, 64, 64),)


def resnet50(tiny: bool):
    return _bottleneck_net(torchvision.models.resnet50, tiny)


def resnext50_32x4d(tiny: bool):
    return _bottleneck_net(torchvision.models.resnext50_32x4d, tiny, groups=32, width_per_group=4)


def vgg16(tiny: bool):
    if tiny:  # VGG's classifier expects 7x7 after its pool; 64x64 input is adaptive-pooled to it
        model = torchvision.models.vgg16(weights=None, num_classes=10)
        model.classifier = torch.nn.Sequential(torch.nn.Linear(512 * 7 * 7, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
        return model, (torch.randn(1, 3, 64, 64),)
    return _classifier(torchvision.models.vgg16, tiny)


def _detection_input(size: int):
    # torchvision detectors take a list of 3-d images in [0, 1] and return a list of dicts
    return ([torch.rand(3, size, size)],)


def ssd300_vgg16(tiny: bool):
    """torchvision's SSD300-VGG16 end to end: resize and normalise, backbone, heads, box decoding,
    score filter and NMS (data-dependent: runs on the host). Tiny keeps the 300x300 input its
    VGG16 backbone and extras need and shrinks the class head."""
    classes = 5 if tiny else 91
    ssd = torchvision.models.detection.ssd300_vgg16(weights=None, weights_backbone=None, num_classes=classes)
    return ssd, _detection_input(300)


def retinanet_resnet50_fpn(tiny: bool):
    """torchvision's RetinaNet (ResNet-50 FPN) end to end, images resized to 800 (tiny: 128).
    Score threshold 0.005, not 0.05: the head's prior makes random-weight scores about 0.01, and
    a detector that keeps no box would leave its post-processing untested and unmeasured."""
    size = 128 if tiny else 800
    options = dict(min_size=size, max_size=size, score_thresh=0.005)
    if not tiny:
        model = torchvision.models.detection.retinanet_resnet50_fpn(weights=None, weights_backbone=None, **options)
        return model, _detection_input(size)
    # tiny: the same detector built as torchvision builds it (retinanet_resnet50_fpn, untrained), on
    # the tiny ResNet-50's one Bottleneck a stage
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.models.detection.retinanet import RetinaNet
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7

    backbone = _resnet_fpn_extractor(resnet50(tiny=True)[0], 5, returned_layers=[2, 3, 4],
                                     extra_blocks=LastLevelP6P7(256, 256))
    return RetinaNet(backbone, 5, **options), _detection_input(size)
