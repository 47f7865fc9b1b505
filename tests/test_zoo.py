"""Every zoo model, tiny variant, traces and matches eager PyTorch; every family on both shipped
targets, one compile per model and target. The detectors run end to end in test_regions.py (with
more checks; YOLOv5s on onnxruntime, the others on openvino), except YOLOv4, which runs here, on
onnxruntime; the seq2seq models compile for generation in test_generation.py; the other families
alternate between the targets, BERT and ResNet-18 run on both in test_pipeline.py, and DLRM (the
only recommender) on both here. Every model is analysed on both Inferentia profiles."""
import pytest

import archfit
from archfit import zoo
from archfit.targets.neuron import neuron_data, ts_name
from conftest import assert_close_to_eager, openvino_layer_types

DETECTORS = {"ssd300_vgg16", "retinanet_resnet50_fpn", "yolov3", "yolov4", "yolov5s"}  # see test_regions.py
# the tensorflow, onnx and mxnet families go through the frontends: test_frontends.py checks them against
# their own framework (TensorFlow, ONNX Runtime, MXNet's saved outputs) rather than against eager PyTorch
FOREIGN = {"tensorflow", "onnx", "mxnet"}


def _target_of() -> dict[str, str]:
    out, turn = {}, {}
    for name in zoo.names():
        family = zoo.get(name).family
        if family in FOREIGN:
            continue
        if name == "yolov4":
            out[name] = "onnxruntime"
        elif name not in DETECTORS:
            turn[family] = turn.get(family, -1) + 1
            out[name] = ("openvino", "onnxruntime")[turn[family] % 2]
    return out


TARGET_OF = _target_of()
# the recommender family is one model: it runs on both. The seq2seq models compile in
# test_generation.py as generation runs them (encoder buckets, decoder steps; MarianMT and Pegasus
# on openvino, BART on onnxruntime), checked token for token, so they are analysed here only; so
# are the decoder-only generators (test_causal.py: GPT-2 on onnxruntime, the others on openvino).
GENERATORS = ("seq2seq", "generation")
CASES = sorted((n, t) for n, t in TARGET_OF.items() if zoo.get(n).family not in GENERATORS) + [("dlrm", "onnxruntime")]


def test_every_family_meets_both_targets():
    from test_generation import FAMILIES, TARGET as GENERATION_TARGET

    families = {}
    for name, target in CASES + [(n, GENERATION_TARGET.get(n, "openvino")) for n in FAMILIES]:
        families.setdefault(zoo.get(name).family, set()).add(target)
    assert all(targets == {"openvino", "onnxruntime"} for f, targets in families.items() if f not in ("toy", "detection"))
    from test_causal import TARGETS as CAUSAL_TARGETS
    assert set(CAUSAL_TARGETS.values()) == {"openvino", "onnxruntime"}


@pytest.fixture(scope="module")
def analyses():
    """Every tiny zoo model analysed once, on both Inferentia profiles and on the shipped target(s)
    its compile test uses; that test compiles the analysed graphs (Analysis.compile: one capture
    per model for the whole file)."""
    out = {}
    for name in zoo.names():
        if zoo.get(name).family in FOREIGN:
            continue
        if name in DETECTORS and name not in TARGET_OF:
            continue  # analysed, Inferentia included, and compiled in test_regions.py
        targets = ["inf1", "inf2"] + sorted({t for n, t in CASES if n == name})
        out[name] = archfit.analyze(*zoo.build(name, tiny=True), targets=targets)
    return out


@pytest.mark.parametrize("name, target", CASES)
def test_tiny_zoo_model_matches_eager(analyses, name, target):
    analysis = analyses[name]
    compiled = analysis.compile(target, check_payoff=False)
    assert compiled.report.validation.ok
    assert compiled.report.partitions, "nothing ran on the target"
    if analysis.regions is None:  # the fit report made before compiling named the partitions the compile made
        assert [p.nodes for p in compiled.report.partitions] == [p.nodes for p in analysis[target].partitions]
    assert_close_to_eager(analysis.module, compiled, analysis.example_inputs)
    if (name, target) == ("dlrm", "openvino"):  # the stack goes over as unsqueeze + concat, the pairwise
        # pick as one Gather (targets/openvino.py): no Interaction kernel, no Transpose
        assert not {"Interaction", "Transpose"} & openvino_layer_types(compiled)


def test_captured_ops_without_a_torch_neuron_entry(analyses):
    """Which ops of the zoo's captured graphs (whole models, or the regions of detectors with
    NMS) have no entry in torch-neuron's list (after the TorchScript-name aliases). gather, index
    and cumsum (RoBERTa's position ids) are truly absent, so they run on the CPU, as is diff
    (transformers' mask code looks for packed sequences in the causal LMs' position ids);
    scaled_dot_product_attention postdates torch-neuron and is judged by its decomposition."""
    d = neuron_data("neuron_inf1_torch_ops.json")
    known = set(d["supported"]) | set(d["limited"]) | set(d["removed"])
    unmapped = set()
    for analysis in analyses.values():
        for captured in analysis.captured.values():
            for node in captured.graph_module.graph.nodes:
                if node.op == "call_function" and ts_name(node.target).startswith("aten::"):
                    if ts_name(node.target) not in known:
                        unmapped.add(ts_name(node.target))
    assert unmapped == {"aten::gather", "aten::index", "aten::cumsum", "aten::diff",
                        "aten::scaled_dot_product_attention"}


@pytest.mark.parametrize("name", sorted(TARGET_OF))
def test_inf2_analysis_of_tiny_zoo_models(analyses, name):
    report = analyses[name]["inf2"]
    assert report.total_ops > 0 and report.partitions
    e = report.estimate
    assert e.chip == "inf2" and e.total_ms == pytest.approx(e.device_ms + e.transfer_ms + e.host_ms)
    text = report.to_text()
    assert "ESTIMATED latency on inf2" in text and "not a measurement" in text




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
