"""Detectors end to end: what cannot be captured at fixed shapes (NMS behind a branch on a tensor's
size) stays the model's Python on the host; the rest is compiled; outputs equal eager PyTorch."""
from __future__ import annotations

import pytest
import torch

import archfit
from archfit import zoo
from archfit.errors import ArtifactError, CaptureError
from archfit.regions import AttachedModule
from conftest import assert_same_detections

# YOLOv4 (the slowest to capture) runs end to end on onnxruntime in test_zoo.py instead
DETECTORS = ["ssd300_vgg16", "retinanet_resnet50_fpn", "yolov3", "yolov5s"]
NMS_BRANCH = "torchvision/ops/boxes.py:86"  # batched_nms: `if boxes.numel() > ...` on a data-dependent size


def _images(inputs, seed: int):
    g = torch.Generator().manual_seed(seed)
    if isinstance(inputs[0], list):  # torchvision: a list of 3-d images
        return ([torch.rand(inputs[0][0].shape, generator=g)],)
    return (torch.rand(inputs[0].shape, generator=g),)


@pytest.fixture(scope="module", params=DETECTORS)
def detector(request):
    model, inputs = zoo.build(request.param, tiny=True)
    return request.param, model, inputs, archfit.trace(model, inputs, "openvino", check_payoff=False)


def test_detector_matches_eager_on_several_images(detector):
    _name, model, inputs, compiled = detector
    assert isinstance(compiled, AttachedModule) and compiled.validation.ok
    boxes = 0
    for seed in range(3):
        images = _images(inputs, seed)
        with torch.no_grad():
            want, got = model(*images), compiled(*images)
        assert_same_detections(got, want, *archfit.TOLERANCES["fp32"])
        boxes += sum(len(w["boxes"]) for w in want)
    assert boxes > 0, "no detections at all: the comparison would prove nothing"


def test_detector_regions_are_the_network_and_nms_is_on_the_host(detector):
    name, model, _inputs, compiled = detector
    plan = compiled.plan
    root = type(model).__name__
    expected = {"ssd300_vgg16": {"backbone", "head"}, "retinanet_resnet50_fpn": {"backbone", "head"}}
    assert set(compiled.regions) == expected.get(name, {"net"})
    assert sum(plan.region_flops.values()) / plan.total_flops > 0.99  # the compute is compiled
    top = plan.host[0]
    assert top.module == root and "depends on tensor values" in top.reason and top.source.startswith(NMS_BRANCH)
    assert f"{root}: control flow depends on tensor values" in compiled.summary()


def test_analyze_lists_host_regions_with_source_lines():
    model, inputs = zoo.build("ssd300_vgg16", tiny=True)
    analysis = archfit.analyze(model, inputs, ["openvino", "inf2"])
    text = analysis.to_text()
    assert "host regions" in text and NMS_BRANCH in text and "of FLOPs" in text
    assert {r.model for r in analysis.reports} == {"SSD.backbone", "SSD.head"}
    assert {r.target for r in analysis.reports} == {"openvino", "inf2"}
    d = analysis.to_dict()["regions"]
    assert d["host"][0]["source"].startswith(NMS_BRANCH) and set(d["regions"]) == {"backbone", "head"}


def test_require_full_refuses_with_the_branch_named():
    model, inputs = zoo.build("yolov5s", tiny=True)
    with pytest.raises(CaptureError, match=f"control flow depends on tensor values.*{NMS_BRANCH}.*require_full"):
        archfit.trace(model, inputs, "openvino", require_full=True)


def test_save_load_attaches_to_the_model(tmp_path):
    model, inputs = zoo.build("yolov5s", tiny=True)  # the round trip is alike for every detector
    compiled = archfit.trace(model, inputs, "openvino", check_payoff=False)
    path = archfit.save(compiled, tmp_path / "det.archfit")
    with pytest.raises(ArtifactError, match="holds compiled regions of archfit.zoo.yolo.Detector.*model="):
        archfit.load(path)
    with pytest.raises(ArtifactError, match="compiled from a archfit.zoo.yolo.Detector, not the"):
        archfit.load(path, model=zoo.build("yolov3", tiny=True)[0].net)
    other = zoo.build("yolov5s", tiny=True, seed=1)[0]
    with pytest.raises(ArtifactError, match="weights of archfit.zoo.yolo.Detector.net differ"):
        archfit.load(path, model=other)
    loaded = archfit.load(path, model=model)
    images = _images(inputs, 7)
    with torch.no_grad():
        assert_same_detections(loaded(*images), model(*images), *archfit.TOLERANCES["fp32"])
    assert loaded.manifest["meta"]["class"] == "archfit.zoo.yolo.Detector"


def test_region_engines_sleep_while_the_host_runs_nms():
    """A region alone in its graph would spin its ONNX Runtime workers; the detector's own NMS
    runs between its calls, so they must sleep (spinning workers took the host's cores)."""
    model, inputs = zoo.build("yolov5s", tiny=True)
    attached = archfit.trace(model, inputs, "onnxruntime", check_payoff=False)
    engines = [m.engine for m in attached.modules() if hasattr(m, "engine")]
    assert engines and all(
        e.session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"
        for e in engines)
