"""Reference models built from configs with random weights (nothing is downloaded).

Each entry builds `(model, example_inputs)` at full size, or `tiny=True`: the same
architecture shrunk for tests."""
from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from typing import Any, Callable

import torch

from . import dlrm, keras_models as tfk, mxnet_models as mxm, toy, transformers_models as hf, vision, yolo


@dataclass(frozen=True)
class ZooModel:
    name: str
    family: str
    description: str
    build: Callable[[bool], tuple[Any, Any]]  # build(tiny) -> (model, example_inputs)
    accuracy: str | None = None  # the task gate validation uses (core/accuracy.py); None: elementwise


# Families whose outputs an elementwise tolerance judges wrongly in bf16: a detector's boxes cross
# NMS and the score threshold under rounding, so they declare the detection gate.
_FAMILY_GATES = {"detection": "detection"}


# name, family, description, build(tiny) -> (model, example_inputs)
_ENTRIES = (
    ("bert-base", "language", "BERT-base uncased, seq 128", hf.bert_base),
    ("distilbert-base", "language", "DistilBERT-base uncased, seq 128", hf.distilbert_base),
    ("roberta-base", "language", "RoBERTa-base, seq 128", hf.roberta_base),
    ("xlm-roberta-base", "language", "XLM-RoBERTa-base (250k vocabulary), seq 128", hf.xlm_roberta_base),
    ("biobert-base", "language", "BioBERT v1.1 (BERT-base, BioBERT's cased vocabulary), seq 128", hf.biobert_base),
    ("marian-en-de", "seq2seq", "MarianMT en-de (opus-mt-en-de config): encoder + one decoder step, src 64",
     hf.marian_en_de),
    ("pegasus", "seq2seq", "Pegasus-large: encoder + one decoder step, src 64", hf.pegasus),
    ("bart-base", "seq2seq", "BART-base: encoder + one decoder step, src 64", hf.bart_base),
    ("gpt2", "generation", "GPT-2 (124M), prompt 128 (compile --generate: prefill + decode step)", hf.gpt2),
    ("llama-100m", "generation", "Llama-architecture ~100M (8x768, GQA 12/4), prompt 128 (compile --generate)",
     hf.llama_100m),
    ("resnet18", "vision", "ResNet-18, 224x224", vision.resnet18),
    ("resnet50", "vision", "ResNet-50, 224x224", vision.resnet50),
    ("resnext50_32x4d", "vision", "ResNeXt-50 32x4d, 224x224", vision.resnext50_32x4d),
    ("vgg16", "vision", "VGG16, 224x224", vision.vgg16),
    ("ssd300_vgg16", "detection", "torchvision SSD300-VGG16 end to end (NMS on the host), 300x300",
     vision.ssd300_vgg16),
    ("retinanet_resnet50_fpn", "detection",
     "torchvision RetinaNet ResNet-50 FPN end to end (NMS on the host), 800x800", vision.retinanet_resnet50_fpn),
    ("yolov3", "detection", "YOLOv3 (Darknet-53) with NMS on the host, 416x416", yolo.yolov3),
    ("yolov4", "detection", "YOLOv4 (CSPDarknet53, SPP, PANet) with NMS on the host, 608x608", yolo.yolov4),
    ("yolov5s", "detection", "YOLOv5s (v6.0) with NMS on the host, 640x640", yolo.yolov5s),
    ("dlrm", "recommender", "DLRM, Criteo Kaggle config (26 tables x 16, 2.2 GB), batch 128", dlrm.dlrm),
    ("keras-resnet50", "tensorflow", "Keras ResNet50 (keras.applications, weights=None), 224x224", tfk.keras_resnet50),
    ("keras-vgg16", "tensorflow", "Keras VGG16 (keras.applications, weights=None), 224x224", tfk.keras_vgg16),
    ("keras-bert-base", "tensorflow", "BERT-base encoder in Keras layers, seq 128 (length and batch open)",
     tfk.keras_bert),
    ("tf-detector", "tensorflow", "SSD/YOLO-style TF head with combined NMS (NMS on the host), 320x320",
     tfk.tf_detector),
    ("resnet50-onnx", "onnx", "ResNet-50 from the PyTorch zoo, exported to an ONNX file",
     lambda tiny: tfk.onnx_from_torch(vision.resnet50, "resnet50", tiny)),
    ("bert-base-onnx", "onnx", "BERT-base from the PyTorch zoo, exported to an ONNX file",
     lambda tiny: tfk.onnx_from_torch(hf.bert_base, "bert-base", tiny)),
    ("mxnet-resnet18", "mxnet", "ResNet-18 v1 as MXNet symbol + params (Gluon model-zoo layout), 224x224",
     mxm.resnet18),
    ("mxnet-resnet50", "mxnet", "ResNet-50 v1 as MXNet symbol + params (Gluon model-zoo layout), 224x224",
     mxm.resnet50),
    ("mxnet-bert-encoder", "mxnet", "BERT-base-style encoder as MXNet symbol + params (GluonNLP layout), seq 128",
     mxm.bert_encoder),
    ("mlp-custom-op", "toy", "MLP with a custom op no target lowers, in the middle", toy.mlp_custom_op),
)
_ZOO: dict[str, ZooModel] = {e[0]: ZooModel(*e, accuracy=_FAMILY_GATES.get(e[1])) for e in _ENTRIES}


def names() -> list[str]:
    return sorted(_ZOO)


def get(name: str) -> ZooModel:
    from ..errors import ModelError

    if name not in _ZOO:
        raise ModelError(f"no built-in model named {name!r}; built-in models: {', '.join(names())}")
    return _ZOO[name]


def squad_lengths() -> tuple[list[int], int]:
    """Token-length histogram of SQuAD v1.1 (BERT uncased tokenizer, max 384), shipped with
    archfit (see DATA.md): (counts, the length counts[0] is for)."""
    data = json.loads((resources.files("archfit.zoo") / "data" / "squad_v1_bert_lengths.json").read_text())
    return data["counts"], data["lengths_start_at"]


def build(name: str, tiny: bool = False, seed: int = 0) -> tuple[Any, Any]:
    """(model, example inputs): a torch.nn.Module in eval mode, or for the tensorflow and onnx
    families a Keras model / tf.Module, or the path of an ONNX file, with numpy inputs."""
    torch.manual_seed(seed)
    model, inputs = get(name).build(tiny)
    return (model.eval() if isinstance(model, torch.nn.Module) else model), inputs


__all__ = ["ZooModel", "build", "get", "names", "squad_lengths"]
