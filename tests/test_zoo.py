"""Every zoo model, tiny variant, traces and matches eager PyTorch; every family on both shipped
targets, one compile per model and target. The detectors run end to end on openvino in
test_regions.py (with more checks), except YOLOv4, which runs here, on onnxruntime, with it the
detection family on that target; the other families alternate between the targets, BERT and
ResNet-18 run on both in test_pipeline.py, and DLRM (the only recommender) on both here."""
import pytest

import archfit
from archfit import zoo
from conftest import assert_close_to_eager

DETECTORS = {"ssd300_vgg16", "retinanet_resnet50_fpn", "yolov3", "yolov4", "yolov5s"}  # see test_regions.py


def _target_of() -> dict[str, str]:
    out, turn = {}, {}
    for name in zoo.names():
        family = zoo.get(name).family
        if name == "yolov4":
            out[name] = "onnxruntime"
        elif name not in DETECTORS:
            turn[family] = turn.get(family, -1) + 1
            out[name] = ("openvino", "onnxruntime")[turn[family] % 2]
    return out


TARGET_OF = _target_of()
# the recommender family is one model: it runs on both
CASES = sorted(TARGET_OF.items()) + [("dlrm", "onnxruntime")]


def test_every_family_meets_both_targets():
    families = {}
    for name, target in CASES:
        families.setdefault(zoo.get(name).family, set()).add(target)
    assert all(targets == {"openvino", "onnxruntime"} for f, targets in families.items() if f not in ("toy", "detection"))


@pytest.mark.parametrize("name, target", CASES)
def test_tiny_zoo_model_matches_eager(name, target):
    model, inputs = zoo.build(name, tiny=True)
    compiled = archfit.trace(model, inputs, target=target, check_payoff=False)
    assert compiled.report.validation.ok
    assert compiled.report.partitions, "nothing ran on the target"
    assert_close_to_eager(model, compiled, inputs)


def test_zoo_covers_the_families_that_must_work():
    names = set(zoo.names())
    assert {"bert-base", "distilbert-base", "roberta-base", "xlm-roberta-base", "biobert-base", "marian-en-de",
            "pegasus", "bart-base", "resnet50", "resnext50_32x4d", "vgg16", "ssd300_vgg16", "yolov3", "yolov4",
            "yolov5s", "dlrm"} <= names


def test_full_size_configs_are_the_published_ones():
    """Spot checks that full-size entries are the real architectures (parameter counts)."""
    counts = {"bert-base": 109.5e6, "distilbert-base": 66.4e6, "resnet50": 25.6e6, "yolov5s": 7.2e6}
    for name, expected in counts.items():
        model, _ = zoo.build(name)
        n = sum(p.numel() for p in model.parameters())
        assert abs(n - expected) / expected < 0.02, (name, n)
