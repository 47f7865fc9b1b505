"""Task accuracy gates (accuracy=...): each gate's metric on known outputs, the gate deciding
validation in place of the elementwise tolerance, and its failure naming the metric and by how much."""
import pytest
import torch

import archfit
from archfit.core.accuracy import Classification, Detection, Embedding, Tokens, accuracy_gate
from conftest import cli


def _dets(boxes, scores, labels):
    return [{"boxes": torch.tensor(boxes, dtype=torch.float32), "scores": torch.tensor(scores),
             "labels": torch.tensor(labels)}]


WANT = _dets([[0, 0, 10, 10], [20, 20, 40, 40], [50, 50, 60, 70]], [0.9, 0.8, 0.3], [1, 2, 1])


def test_detection_matches_boxes_by_iou_and_label():
    assert Detection().measure(WANT, WANT) == {"recall": 1.0, "precision": 1.0}
    # a box moved by 2 px of 20 (IoU 0.82 < 0.9), another of another label, the low score dropped
    got = _dets([[0, 0, 10, 10], [22, 20, 42, 40], [50, 50, 60, 70]], [0.9, 0.8, 0.3], [1, 2, 3])
    m = Detection().measure(got, WANT)
    assert m["recall"] == pytest.approx(1 / 3) and m["precision"] == pytest.approx(1 / 3)
    assert Detection(iou=0.8).measure(got, WANT)["recall"] == pytest.approx(2 / 3)
    # one extra detection: recall stays, precision drops; the score threshold ignores what is under it
    extra = _dets([[0, 0, 10, 10], [20, 20, 40, 40], [50, 50, 60, 70], [80, 80, 90, 90]], [0.9, 0.8, 0.3, 0.1],
                  [1, 2, 1, 1])
    assert Detection().measure(extra, WANT) == {"recall": 1.0, "precision": 0.75}
    assert Detection(score_threshold=0.2).measure(extra, WANT) == {"recall": 1.0, "precision": 1.0}
    # YOLO-style [N, 6] rows: x1, y1, x2, y2, score, label
    rows = torch.tensor([[0, 0, 10, 10, 0.9, 1], [20, 20, 40, 40, 0.8, 2.0]])
    assert Detection().measure([rows], [rows[:1]]) == {"recall": 1.0, "precision": 0.5}


def test_a_failed_detection_gate_names_the_score_above_which_it_passes():
    """A tail of low, near-equal scores (a detector's evaluation threshold) reorders in reduced
    precision while the confident boxes match: the failure says from which score the gate holds."""
    from archfit.core.validate import check_gate

    tail = [[100, 100, 110, 110], [120, 120, 130, 130], [140, 140, 150, 150]]
    want = _dets([[0, 0, 10, 10], [20, 20, 40, 40]] + tail, [0.9, 0.8, 0.05, 0.04, 0.03], [1, 2, 1, 1, 1])
    moved = [[b[0] + 5, b[1], b[2] + 5, b[3]] for b in tail]
    got = _dets([[0, 0, 10, 10], [20, 20, 40, 40]] + moved, [0.9, 0.8, 0.05, 0.04, 0.03], [1, 2, 1, 1, 1])
    with pytest.raises(archfit.ValidationError, match=r"recall 0\.4 < 0\.99 \(short by 0\.59\) \(it passes on the "
                                                      r"boxes scoring >= 0\.8: accuracy='detection:score_threshold=0\.8'"):
        check_gate(Detection(), got, want, "example inputs", "bf16", blame=lambda: "")
    assert Detection(score_threshold=0.8).check(got, want, "").ok  # the hint's gate holds
    top_moved = _dets([[3, 0, 13, 10], [20, 20, 40, 40]] + tail, [0.9, 0.8, 0.05, 0.04, 0.03], [1, 2, 1, 1, 1])
    assert Detection().hint(top_moved, want) == ""  # no threshold helps when the best box moved


def test_classification_embedding_and_token_gates_measure_what_they_say():
    want = torch.tensor([[5.0, 4, 3, 2, 1, 0], [0, 1, 2, 3, 4, 5]])
    swapped = torch.tensor([[4.0, 5, 3, 2, 1, 0], [0, 1, 2, 3, 4, 5]])  # row 0's top two swap
    assert Classification().measure(swapped, want) == {"top1": 0.5, "top5": 1.0}
    emb = torch.randn(3, 16)
    assert Embedding().measure(emb, emb)["cosine"] == pytest.approx(1.0)
    assert Embedding().measure(-emb, emb)["cosine"] == pytest.approx(-1.0)
    ids = torch.tensor([[1, 2, 3, 4]])
    assert Tokens().measure(torch.tensor([[1, 2, 0, 4]]), ids) == {"agreement": 0.75}
    assert Tokens().measure(torch.tensor([[1, 2]]), ids) == {"agreement": 0.5}  # a shorter generation
    assert Tokens().measure(swapped, want) == {"agreement": 0.5}  # logits: the greedy token


def test_gate_specs_parse_and_bad_ones_say_what_is_accepted():
    assert accuracy_gate("detection:recall=0.98, iou=0.85") == Detection(iou=0.85, recall=0.98)
    assert accuracy_gate(None) is None and accuracy_gate(Tokens()) == Tokens()
    with pytest.raises(archfit.ArchfitError, match="no such gate; choose one of classification, embedding"):
        accuracy_gate("boxes")
    with pytest.raises(archfit.ArchfitError, match="detection has no bound top1; it takes iou, precision, recall"):
        accuracy_gate("detection:top1=0.9")
    with pytest.raises(archfit.ArchfitError, match="bounds are key=number pairs"):
        accuracy_gate("embedding:cosine=high")


def test_gate_decides_validation_and_the_report_prints_the_metric(mlp):
    model, inputs = mlp
    # inf1 computes matmuls in bf16: the elementwise error is real, the top-1 class is what a classifier needs
    compiled = archfit.trace(model, inputs, target="inf1", accuracy="classification")
    v = compiled.report.validation
    assert v.gate == "classification" and v.ok and [m.label for m in v.metrics] == ["example inputs", "random inputs"]
    assert dict(v.metrics[0].values)["top1"] >= 0.99 and v.max_rel > 1e-4  # bf16 is in effect
    text = compiled.report.to_text()
    assert "classification gate on the example inputs (bf16): top1 1 >= 0.99" in text
    assert "the task gate below decides" in text


def test_failed_gate_names_the_metric_and_by_how_much(mlp):
    model, inputs = mlp
    with pytest.raises(archfit.ValidationError, match=r"validate: the embedding \(cosine=1, mean_cosine=0\.99\) gate fails on the example "
                                                      r"inputs \(bf16\): cosine 0\.\d+ < 1 \(short by \d(\.\d+)?e-\d+\); partition 0 \(inf1\) is at "
                                                      r"fault"):
        archfit.trace(model, inputs, target="inf1", accuracy=Embedding(cosine=1.0))
    with pytest.raises(archfit.ValidationError, match="accuracy='detection' needs detections .* among the model's "
                                                      "outputs and found none"):
        archfit.trace(model, inputs, target="inf1", accuracy="detection")


class ConfidentDetector(torch.nn.Module):
    """A conv head over a 16x16 grid of 4-pixel cells: one box per cell (its cell plus small
    offsets) and a confident score (far from the 0.5 threshold), a score filter and NMS, with
    torchvision's output format: what a trained detector's detections look like."""

    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(),
                                        torch.nn.Conv2d(16, 5, 4, stride=4))  # 4 offsets and a logit per cell
        ys, xs = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
        cells = torch.stack([xs, ys, xs + 1, ys + 1], -1).reshape(-1, 4) * 4
        self.register_buffer("cells", cells)

    def forward(self, x):
        import torchvision

        out = self.body(x)[0].flatten(1).T  # [256, 5]
        boxes, scores = self.cells + 0.1 * out[:, :4], (20 * out[:, 4]).sigmoid()
        keep = scores > 0.5  # data-dependent: this part runs on the host
        boxes, scores = boxes[keep], scores[keep]
        i = torchvision.ops.nms(boxes, scores, 0.5)
        return [{"boxes": boxes[i], "scores": scores[i], "labels": torch.ones_like(i)}]


def test_confident_detector_in_bf16_passes_the_detection_gate(monkeypatch):
    """The gate decides for the whole detector: its region's elementwise error (raw offsets and
    logits) is reported, not deciding. A zero elementwise tolerance makes every region miss it."""
    from archfit.core.validate import TOLERANCES

    monkeypatch.setitem(TOLERANCES, "bf16", (0.0, 0.0))
    torch.manual_seed(0)
    model, inputs = ConfidentDetector().eval(), (torch.rand(1, 3, 64, 64),)
    compiled = archfit.trace(model, inputs, target="inf1", accuracy="detection")  # inf1: bf16 convolutions
    v = compiled.validation
    assert isinstance(compiled, archfit.AttachedModule) and v.gate == "detection" and v.ok
    assert [r.report.validation.ok for r in compiled.regions.values()] == [False]  # measured, reported, not deciding
    assert v.max_rel > 1e-4  # bf16 is in effect
    for m in v.metrics:
        assert dict(m.values)["recall"] >= 0.99 and dict(m.values)["precision"] >= 0.99
    assert len(model(*inputs)[0]["boxes"]) > 50  # the gate matched real detections, not an empty list
    assert "detection gate on the example inputs (bf16): recall" in compiled.summary()


def test_random_weight_ssd_in_bf16_fails_the_gate_by_a_stated_margin():
    """A random-weight SSD scores every box about alike, so bf16 rounding reorders NMS: the gate
    says which metric missed and by how much (the zoo entry declares this gate)."""
    from archfit import zoo

    assert zoo.get("ssd300_vgg16").accuracy == "detection"
    model, inputs = zoo.build("ssd300_vgg16", tiny=True)
    with pytest.raises(archfit.ValidationError, match=r"torchvision.models.detection.ssd.SSD: the detection \(iou=0.9, "
                                                      r"recall=0.99, .*\) gate fails on the example inputs \(bf16\): "
                                                      r"(recall|precision) 0\.\d+ < 0.99 \(short by 0\.\d+\)"):
        archfit.trace(model, inputs, target="inf1", accuracy="detection")


def test_cli_accuracy_option_reaches_the_gate(tmp_path):
    out = cli("compile", "mlp-custom-op", "--tiny", "-t", "inf1", "--accuracy", "embedding:cosine=0.99", "--no-compare")
    assert out.returncode == 0, out.stderr
    assert "embedding gate on the example inputs (bf16): cosine" in out.stdout
    bad = cli("compile", "mlp-custom-op", "--tiny", "--accuracy", "boxes", "--no-compare")
    assert bad.returncode != 0 and "no such gate" in bad.stderr
