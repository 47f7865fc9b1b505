"""Detectors end to end: what cannot be captured at fixed shapes (NMS behind a branch on a tensor's
size) stays the model's Python on the host; the rest is compiled; outputs equal eager PyTorch.
Each detector is analysed once (openvino and both Inferentia profiles) and compiled from that
analysis; YOLOv5s on onnxruntime, the others on openvino."""
from __future__ import annotations

import functools

import pytest
import torch

import archfit
from archfit import zoo
from archfit.errors import ArtifactError, CaptureError
from archfit.regions import AttachedModule
from conftest import assert_same_detections, cli

# YOLOv4 (the slowest to capture) runs end to end on onnxruntime in test_zoo.py instead
DETECTORS = ["ssd300_vgg16", "retinanet_resnet50_fpn", "yolov3", "yolov5s"]
NMS_BRANCH = "torchvision/ops/boxes.py:86"  # batched_nms: `if boxes.numel() > ...` on a data-dependent size


def _images(inputs, seed: int):
    g = torch.Generator().manual_seed(seed)
    if isinstance(inputs[0], list):  # torchvision: a list of 3-d images
        return ([torch.rand(inputs[0][0].shape, generator=g)],)
    return (torch.rand(inputs[0].shape, generator=g),)


TARGET = {"yolov5s": "onnxruntime"}  # the rest on openvino


@functools.cache
def _detector(name: str):
    """Analysed and compiled once per test process, whichever fixture asks first."""
    model, inputs = zoo.build(name, tiny=True)
    target = TARGET.get(name, "openvino")
    analysis = archfit.analyze(model, inputs, ["inf1", "inf2", target])
    return name, model, inputs, analysis.compile(target, check_payoff=False), analysis


@pytest.fixture(scope="module", params=DETECTORS)
def detector(request):
    return _detector(request.param)


@pytest.fixture(scope="module")
def yolov5s(tmp_path_factory):
    """The compiled YOLOv5s (on onnxruntime), saved."""
    found = _detector("yolov5s")
    return found, archfit.save(found[3], tmp_path_factory.mktemp("yolo") / "det.archfit")


def test_detector_matches_eager_on_several_images(detector):
    _name, model, inputs, compiled, _analysis = detector
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
    name, model, _inputs, compiled, _analysis = detector
    plan = compiled.plan
    root = type(model).__name__
    expected = {"ssd300_vgg16": {"backbone", "head"}, "retinanet_resnet50_fpn": {"backbone", "head"}}
    assert set(compiled.regions) == expected.get(name, {"net"})
    assert sum(plan.region_flops.values()) / plan.total_flops > 0.99  # the compute is compiled
    top = plan.host[0]
    assert top.module == root and "depends on tensor values" in top.reason and top.source.startswith(NMS_BRANCH)
    assert f"{root}: control flow depends on tensor values" in compiled.summary()


def test_analysis_lists_host_regions_with_source_lines(detector):
    name, model, _inputs, compiled, analysis = detector
    text = analysis.to_text()
    assert "host regions" in text and NMS_BRANCH in text and "of FLOPs" in text
    root = type(model).__name__
    assert {r.model for r in analysis.reports} == {f"{root}.{path}" for path in compiled.regions}
    assert {r.target for r in analysis.reports} == {"inf1", "inf2", TARGET.get(name, "openvino")}
    d = analysis.to_dict()["regions"]
    assert d["host"][0]["source"].startswith(NMS_BRANCH) and set(d["regions"]) == set(compiled.regions)
    # the HTML page lists the regions too: compiled ones and the host region with its source line
    rows = compiled.page()["regions"]["regions"]
    assert {r["path"] for r in rows if r["compiled"]} == {f"{root}.{p}" for p in compiled.regions}
    assert any(not r["compiled"] and NMS_BRANCH in r["why"] for r in rows)
    assert NMS_BRANCH in analysis.to_html()
    for r in analysis.reports:  # Inferentia's estimate per region
        if r.target in ("inf1", "inf2"):
            e = r.estimate
            assert e.chip == r.target and e.total_ms == pytest.approx(e.device_ms + e.transfer_ms + e.host_ms)


def test_require_full_refuses_with_the_branch_named():
    model, inputs = zoo.build("yolov5s", tiny=True)
    with pytest.raises(CaptureError, match=f"control flow depends on tensor values.*{NMS_BRANCH}.*require_full"):
        archfit.trace(model, inputs, "openvino", require_full=True)


def test_save_load_attaches_to_the_model(yolov5s):
    (_name, model, inputs, _compiled, _analysis), path = yolov5s  # the round trip is alike for every detector
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


def test_region_engines_sleep_while_the_host_runs_nms(yolov5s):
    """A region alone in its graph would spin its ONNX Runtime workers; the detector's own NMS
    runs between its calls, so they must sleep (spinning workers took the host's cores)."""
    (_name, _model, _inputs, attached, _analysis), _path = yolov5s
    engines = [m.engine for m in attached.modules() if hasattr(m, "engine")]
    assert engines and all(
        e.session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"
        for e in engines)


def test_detector_file_needs_and_takes_its_model(yolov5s, tmp_path):
    (_name, model, inputs, _compiled, _analysis), f = yolov5s
    r = cli("inspect", str(f))
    assert r.returncode == 0 and "needs the model's Python code: archfit.zoo.yolo.Detector" in r.stdout
    r = cli("run", str(f), "-d", str(tmp_path))
    assert r.returncode == 1 and "pass the model to attach to" in r.stderr
    r = cli("run", str(f), "--model", "yolov5s", "--tiny", "-d", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    import numpy as np

    with torch.no_grad():
        want = model(*inputs)[0]
    got = np.load(tmp_path / "out" / "0.labels.npy")
    assert got.shape == tuple(want["labels"].shape)  # the CLI ran the model's own example input


class _BranchOnValue(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Linear(64, 64), torch.nn.Linear(64, 64)

    def forward(self, x):
        h = self.a(x)
        if h.mean() > 0:  # a branch on a value: the model runs as regions
            h = torch.relu(h)
        return self.b(h)


def test_regions_that_all_stay_in_pytorch_name_the_branch_and_say_so():
    with pytest.raises(CaptureError, match=r"_BranchOnValue: control flow depends on tensor values at .*test_regions\.py:"
                                           r"\d+ .*so it runs as regions, and no region kept a partition on openvino"):
        archfit.trace(_BranchOnValue().eval(), (torch.randn(4, 64),), "openvino", force_cpu=["aten.linear"])


class _SelectsRows(torch.nn.Module):
    """A head after a data-dependent selection, as Keypoint R-CNN's heads after RoI pooling: the
    head's row count follows the data."""

    def __init__(self):
        super().__init__()
        self.backbone = torch.nn.Sequential(torch.nn.Linear(16, 128), torch.nn.ReLU(), torch.nn.Linear(128, 64))
        self.head = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 8))

    def forward(self, x):
        h = self.backbone(x)
        if h.mean() > 10:  # a branch on a value: the model runs as regions
            h = h * 2
        return self.head(h[h[:, 0] > 0])


def test_a_region_whose_input_size_follows_the_data_stays_on_the_host():
    torch.manual_seed(0)
    model = _SelectsRows().eval()
    x = torch.randn(64, 16)
    compiled = archfit.trace(model, (x,), "openvino", check_payoff=False)
    assert compiled.plan.regions == ("backbone",)
    host = {h.module: h.reason for h in compiled.plan.host}
    assert "its input shapes depend on the data" in host["_SelectsRows.head"], host
    for seed in (1, 2, 3):  # other inputs keep other row counts: answered, not refused
        other = torch.randn(64, 16, generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            want = model(other)
        got = compiled(other)
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_a_region_called_at_another_size_than_compiled_runs_in_pytorch_and_says_so(monkeypatch):
    """The safety net behind the check above: a size that planning did not see move."""
    import archfit.regions.plan as plan

    monkeypatch.setattr(plan, "_data_dependent", lambda *args: {})
    torch.manual_seed(0)
    model = _SelectsRows().eval()
    compiled = archfit.trace(model, (torch.randn(64, 16),), "openvino", check_payoff=False)
    assert compiled.plan.regions == ("backbone", "head")  # the head, compiled at the example's row count
    other = torch.randn(64, 16, generator=torch.Generator().manual_seed(1))
    with pytest.warns(UserWarning, match=r"region head was compiled at input shape \[\d+, 64\], called at \[\d+, 64\]"):
        got = compiled(other)
    with torch.no_grad():
        torch.testing.assert_close(got, model(other), atol=1e-4, rtol=1e-4)
