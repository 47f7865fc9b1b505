"""Inferentia profiles: support from Neuron's published data, Neuron's partition policies,
roofline estimates, and emulated execution with Inferentia's numerics. Every zoo model on both
profiles: test_zoo.py (one analysis per model, shared with its compile test)."""

import pytest
import torch

import archfit
from archfit.targets.neuron import neuron_data
from conftest import assert_close_to_eager


class CumsumMLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Linear(32, 32), torch.nn.Linear(32, 32)

    def forward(self, x):
        h = torch.relu(self.a(x))
        h = torch.cumsum(h, dim=-1)  # not in torch-neuron's list
        return torch.relu(self.b(h))


class SortMLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Linear(32, 32), torch.nn.Linear(32, 32)

    def forward(self, x):
        h = torch.relu(self.a(x))
        h = torch.sort(h, dim=-1).values  # Neuron names sort unsupported on inf2
        return torch.relu(self.b(h))


def test_shipped_inf1_list_names_its_source_and_torchscript_ops():
    d = neuron_data("neuron_inf1_torch_ops.json")
    assert d["source"].startswith("aws-neuron/aws-neuron-sdk")
    entries = list(d["supported"]) + list(d["limited"]) + list(d["removed"])
    assert len(entries) > 150 and all(e.startswith(("aten::", "prim::")) for e in entries), entries[:5]
    assert "aten::embedding" in d["removed"]  # neuron_facts.md: removed from the list for performance


def test_inf1_bert_embedding_falls_back_with_neuron_reason(tiny_bert):
    model, inputs = tiny_bert
    report = archfit.analyze(model, inputs, targets=["inf1"])["inf1"]
    groups = {g.op: g for g in report.fallback}
    emb = groups["aten.embedding"]
    assert emb.count == 3 and "removed from the supported list: does not meet performance criteria" in emb.detail
    assert any("word_embeddings(input_ids)" in s for s in emb.sources)
    # the attention core, sdpa included (via its decomposition), stays on the device in one partition
    assert "aten.scaled_dot_product_attention" not in groups and "aten.linear" not in groups
    assert len(report.partitions) == 1 and report.precision == "bf16"
    assert report.estimate is not None and report.estimate.total_ms > 0


def test_inf1_op_missing_from_list_falls_back_with_source_line():
    report = archfit.analyze(CumsumMLP(), (torch.randn(4, 32),), targets=["inf1"])["inf1"]
    (group,) = [g for g in report.fallback if g.op == "aten.cumsum"]
    assert group.reason == "no lowering on this target" and "torch-neuron's supported-operator list" in group.detail
    assert group.sources[0].startswith("tests/test_neuron.py:") and "torch.cumsum(h, dim=-1)" in group.sources[0]


def test_inf1_single_fusion_policy_keeps_only_the_largest_partition(tiny_bert):
    model, inputs = tiny_bert
    report = archfit.analyze(model, inputs, targets=["inf1"], min_partition_size=1)["inf1"]
    policy = [g for g in report.fallback if g.reason == "target's partition policy"]
    assert policy and "single_fusion_ratio_threshold 0.6" in policy[0].detail
    assert len(report.partitions) == 1


def test_inf1_has_no_fp32_matmul(tiny_resnet18):
    model, inputs = tiny_resnet18
    with pytest.raises(archfit.ArchfitError, match="precision 'fp32' is not offered by target 'inf1'; choose one of bf16"):
        archfit.analyze(model, inputs, targets=["inf1"], precision="fp32")


def test_inf2_sort_falls_back_and_everything_else_fits():
    report = archfit.analyze(SortMLP(), (torch.randn(4, 32),), targets=["inf2"])["inf2"]
    (group,) = report.fallback
    assert group.op == "aten.sort" and "torch-neuronx: named unsupported by Neuron" in group.detail
    assert len(report.partitions) == 2 and report.precision == "fp32"


@pytest.mark.parametrize("target", ["inf1", "inf2"])
def test_emulated_execution_matches_eager(tiny_resnet18, target):
    model, inputs = tiny_resnet18
    compiled = archfit.trace(model, inputs, target=target)
    precision = compiled.report.precision
    assert precision == {"inf1": "bf16", "inf2": "fp32"}[target]
    assert compiled.emulated and "EMULATED" in repr(compiled)
    assert "EMULATED on this machine's CPU" in compiled.report.to_text()
    assert_close_to_eager(model, compiled, inputs, precision=precision)
    if target == "inf1":  # Inferentia1's bf16 numerics are really applied
        assert compiled.report.validation.max_rel > 1e-4


def test_emulated_bert_on_inf1_runs_embedding_on_cpu(tiny_bert):
    model, inputs = tiny_bert
    compiled = archfit.trace(model, inputs, target="inf1")
    assert len(compiled.report.partitions) == 1
    assert_close_to_eager(model, compiled, inputs, precision="bf16")
