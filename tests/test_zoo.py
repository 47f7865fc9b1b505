"""Every zoo model, tiny variant, on every shipped target: traces and matches eager PyTorch."""
import pytest

import archfit
from archfit import zoo
from conftest import assert_close_to_eager


@pytest.mark.parametrize("target", ["openvino", "onnxruntime"])
@pytest.mark.parametrize("name", zoo.names())
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
