"""AWS Inferentia fit profiles: `inf1` (torch-neuron, neuron-cc) and `inf2` (torch-neuronx,
neuronx-cc). No Inferentia is reachable here, so support comes from Neuron's published
operator data (targets/data/*.json, sources inside), latency from a calibrated roofline
(estimate.py), and execution is EMULATED: target partitions run on OpenVINO's CPU plugin
with Inferentia's numerics (bf16 matmul/conv), so accuracy and partitioning can be checked
on any machine."""
from __future__ import annotations

import json
import math
import operator
from functools import lru_cache
from importlib import resources
from typing import Sequence

import torch
from torch import fx

from . import openvino as ov_target
from .base import ChipSpec, Target, listed_or_decomposed
from .precision import emulate_bf16, emulate_fp8
from .registry import register_target

# The captured graph names ops as torch.export does; torch-neuron's list uses the TorchScript
# names of the same ops. These are the ones whose names differ.
TS_ALIASES = {
    "conv1d": "_convolution", "conv2d": "_convolution", "conv3d": "_convolution",
    "convolution": "_convolution", "conv_transpose1d": "_convolution", "conv_transpose2d": "_convolution",
    "_native_batch_norm_legit_no_training": "batch_norm", "_native_batch_norm_legit": "batch_norm",
    "native_batch_norm": "batch_norm", "native_layer_norm": "layer_norm",
    "_softmax": "softmax", "_safe_softmax": "softmax", "_log_softmax": "log_softmax",
    "_to_copy": "to", "sym_size": "size", "_unsafe_view": "view", "alias": "detach",
    "lift_fresh_copy": "clone", "bitwise_and": "__and__", "clamp_min": "clamp", "clamp_max": "clamp",
    "scalar_tensor": "full", "new_zeros": "zeros", "fill": "fill_", "zero": "zero_",
    "linalg_vector_norm": "norm",  # what torch.norm / F.normalize capture as today
}


def ts_name(op) -> str:
    """'aten::linear' for torch.ops.aten.linear.default."""
    if not isinstance(op, torch._ops.OpOverload):
        return getattr(op, "__name__", str(op))
    name = op._opname
    return f"{op.namespace}::{TS_ALIASES.get(name, name)}"


@lru_cache(maxsize=None)
def neuron_data(name: str) -> dict:
    return json.loads((resources.files("archfit.targets") / "data" / name).read_text())


# ---- inf1 -------------------------------------------------------------------------------------

def _limited_ok(node: fx.Node, name: str) -> str | None:
    """Conditions of torch-neuron's 'limited support' entries; None when met."""
    if name == "aten::where" and node.target is not torch.ops.aten.where.self:
        return "torch-neuron supports only the 3-argument where (select), not the index-returning form"
    if name == "aten::one_hot" and len(node.args) > 1 and node.args[1] == -1:
        return "torch-neuron needs num_classes known at trace time (num_classes=-1 given)"
    if name == "aten::norm":
        p = node.args[1] if len(node.args) > 1 else 2
        if p not in (1, 2, math.inf, -math.inf, "fro"):
            return f"torch-neuron supports norm only with p in (1, 2, inf, -inf, 'fro'), got {p!r}"
    if name == "aten::max_pool3d_with_indices":
        if any(u.target is operator.getitem and u.args[1] == 1 for u in node.users):
            return "torch-neuron supports max_pool3d_with_indices only when the indices are unused"
    return None


def _inf1_listed(op) -> bool:
    d = neuron_data("neuron_inf1_torch_ops.json")
    name = ts_name(op)
    return (name in d["supported"] or name in d["limited"]) and name not in d["removed"]


_inf1_by_list = listed_or_decomposed(_inf1_listed, "torch-neuron's supported-operator list")


def inf1_supports(node: fx.Node) -> str | None:
    d = neuron_data("neuron_inf1_torch_ops.json")
    name = ts_name(node.target)
    if name in d["removed"]:
        return f"torch-neuron: {d['removed'][name]}"
    if name in d["limited"]:
        return _limited_ok(node, name)
    return _inf1_by_list(node)


def _single_fusion_policy(ratio: float):
    """torch-neuron's single_fusion_ratio_threshold: when one partition holds more than `ratio`
    of the ops, only that partition is compiled."""

    def policy(plan) -> dict[int, str]:
        total = sum(1 for n in plan.table.nodes if n.compute)
        for p in plan.partitions:
            share = p.compute_ops / total if total else 0.0
            if share > ratio and len(plan.partitions) > 1:
                return {q.index: f"torch-neuron compiles only the largest partition, which holds {share:.0%} of "
                                 f"ops (> single_fusion_ratio_threshold {ratio})"
                        for q in plan.partitions if q.index != p.index}
        return {}

    return policy


# ---- inf2 -------------------------------------------------------------------------------------

def _inf2_listed(op) -> bool:
    # torch-xla lowers ATen (and prims) ops; a user's custom op has no HLO lowering
    name = ts_name(op)
    return name.split("::")[0] in ("aten", "prims") and name not in neuron_data("neuron_inf2_torch_ops.json")["unsupported"]


_inf2_by_lowering = listed_or_decomposed(_inf2_listed, "what torch-xla lowers for neuronx-cc")


def inf2_supports(node: fx.Node) -> str | None:
    unsupported = neuron_data("neuron_inf2_torch_ops.json")["unsupported"]
    name = ts_name(node.target)
    if name in unsupported:
        return f"torch-neuronx: {unsupported[name]}"
    return _inf2_by_lowering(node)


def _support_threshold_policy(threshold: float):
    """torch-neuronx PartitionerConfig.model_support_percentage_threshold: below it, Neuron
    refuses to partition the model, so nothing runs on the device."""

    def policy(plan) -> dict[int, str]:
        nodes = [n for n in plan.table.nodes if n.compute]
        share = sum(n.supported for n in nodes) / len(nodes) if nodes else 1.0
        if share >= threshold:
            return {}
        return {p.index: f"torch-neuronx refuses to partition: {share:.0%} of ops supported "
                         f"(< model_support_percentage_threshold {threshold})" for p in plan.partitions}

    return policy


# ---- shared -----------------------------------------------------------------------------------

def emulated_compile(gm: fx.GraphModule, example_inputs: Sequence[torch.Tensor], precision: str):
    """Inferentia's numerics on the CPU: bf16-rounded matmul/conv (fp32 accumulation), the rest
    fp32, run by OpenVINO at fp32 so the CPU adds no rounding of its own."""
    if precision == "bf16":
        gm = emulate_bf16(gm)
    elif precision == "fp8":
        gm = emulate_fp8(gm)
    return ov_target.compile_partition(gm, example_inputs, "fp32")


def _inf1_precision(precision: str) -> str | None:
    if precision == "int8":
        return ("Inferentia1's compiler (neuron-cc) casts matmuls to bf16 or fp16; Neuron documents no int8 "
                "quantization for torch-neuron models, so archfit does not emulate one: use precision='bf16' here, "
                "or target inf2 (fp8 auto-cast) or a CPU target (openvino, onnxruntime) for int8")
    return None


def _inf2_precision(precision: str) -> str | None:
    if precision == "int8":
        return ("Inferentia2's compiler quantizes by casting to fp8 (neuronx-cc --auto-cast-type fp8_e4m3), not to "
                "int8: use precision='fp8'")
    return None


# Neither chip computes in float64 or complex types.
_NEURON_DTYPES = frozenset({torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.int16,
                            torch.int8, torch.uint8, torch.bool})
_FACTS = "aws-neuron-sdk benchmark tables and chip specs, as collected in archfit's neuron_facts.md"
_LINK = ("host<->device link assumed 16 GB/s (PCIe x16 class); Neuron publishes no figure; "
         "one model uses one NeuronCore; DRAM bandwidth of the whole chip is available to it")

INF1_CHIP = ChipSpec(name="inf1", cores=4, core_tflops={"bf16": 16.0}, dram_gib_s=50.0, dram_gib=8.0,
                     host_link_gb_s=16.0, source=_FACTS, assumptions=_LINK)
INF2_CHIP = ChipSpec(name="inf2", cores=2, core_tflops={"bf16": 95.0, "fp32": 23.75}, dram_gib_s=820.0,
                     dram_gib=32.0, host_link_gb_s=16.0, source=_FACTS, assumptions=_LINK)

INF1 = register_target(Target(
    name="inf1", backend="openvino (emulating neuron-cc)", device="Inferentia1",
    description="AWS Inferentia1 via torch-neuron: fit from Neuron's op list; runs EMULATED on the CPU "
                "with bf16 matmul/conv (neuron-cc --fast-math default)",
    supports=inf1_supports, compile=emulated_compile, dtypes=_NEURON_DTYPES,
    precisions=("bf16", "int8"),  # Inferentia1 runs matmuls only in bf16 or fp16; int8 refused, saying why
    precision_unavailable=_inf1_precision,
    default_precision="bf16", unavailable=ov_target.unavailable, emulated=True,
    policy=_single_fusion_policy(0.6), measure_payoff=False, chip=INF1_CHIP.calibrated(),
    load=ov_target.load_engine, versions=ov_target.versions,
))

INF2 = register_target(Target(
    name="inf2", backend="openvino (emulating neuronx-cc)", device="Inferentia2",
    description="AWS Inferentia2 via torch-neuronx: fit from torch-xla lowering minus Neuron's unsupported ops; "
                "runs EMULATED on the CPU (fp32 by default: neuronx-cc --auto-cast none)",
    supports=inf2_supports, compile=emulated_compile, dtypes=_NEURON_DTYPES,
    precisions=("fp32", "bf16", "fp8", "int8"), precision_unavailable=_inf2_precision,
    default_precision="fp32", unavailable=ov_target.unavailable, emulated=True,
    policy=_support_threshold_policy(0.5), measure_payoff=False, chip=INF2_CHIP.calibrated(),
    load=ov_target.load_engine, versions=ov_target.versions,
    min_partition_size=1,  # PartitionerConfig.min_subgraph_size=-1: no minimum
))
