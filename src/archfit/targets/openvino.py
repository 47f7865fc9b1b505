"""OpenVINO on the CPU. Support rules are OpenVINO's own list of ATen ops its PyTorch frontend
lowers (the one its torch.compile backend partitions by), not a guess of ours."""
from __future__ import annotations

import json
import threading
from functools import lru_cache
from typing import Sequence

import torch
from torch import fx

from .base import Engine, Target, export_partition, listed_or_decomposed, requires, to_numpy
from .registry import register_target

_OV_PRECISION = {"fp32": "f32", "bf16": "bf16"}


@lru_cache(maxsize=1)
def _op_support():
    from openvino.frontend.pytorch.torchdynamo.op_support import OperatorSupport

    return OperatorSupport(options={})


@lru_cache(maxsize=None)
def _listed(op) -> bool:
    node = fx.Graph().call_function(op)  # OperatorSupport judges fx nodes; a bare one suffices
    return _op_support().is_node_supported({}, node)


supports = listed_or_decomposed(_listed, "OpenVINO's op list")


class OpenVINOEngine(Engine):
    """One infer request reused across calls; inputs are shared with torch, not copied."""

    def __init__(self, compiled_model, config: dict, blob: bytes | None = None):
        self.compiled_model = compiled_model
        self.config = config
        self.blob = blob  # set when imported: OpenVINO cannot export an imported model again
        self.request = compiled_model.create_infer_request()
        self.lock = threading.Lock()  # one infer request: callers on several threads take turns

    def run(self, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        with self.lock:
            result = self.request.infer([to_numpy(t) for t in inputs], share_inputs=True)
            return [torch.from_numpy(a) for a in result.to_tuple()]

    def serialize(self) -> bytes:
        """One JSON line of the compile config, then OpenVINO's compiled blob. The config must go
        along: imported without it, OpenVINO falls back to its default (bf16 on bf16 CPUs)."""
        blob = self.blob if self.blob is not None else self.compiled_model.export_model().getvalue()
        return json.dumps(self.config).encode() + b"\n" + blob


def load_engine(data: bytes) -> OpenVINOEngine:
    header, blob = data.split(b"\n", 1)
    config = json.loads(header)
    return OpenVINOEngine(core().import_model(blob, "CPU", config), config, blob)


def versions() -> dict:
    import openvino

    return {"openvino": openvino.__version__}


@lru_cache(maxsize=1)
def core():
    import openvino as ov

    return ov.Core()


def _config(precision: str) -> dict:
    # OpenVINO defaults to bf16 on CPUs with bf16 units; fp32 must be asked for explicitly.
    return {"INFERENCE_PRECISION_HINT": _OV_PRECISION[precision], "PERFORMANCE_HINT": "LATENCY"}


def compile_partition(gm: fx.GraphModule, example_inputs: Sequence[torch.Tensor], precision: str) -> OpenVINOEngine:
    import openvino as ov

    ep = export_partition(gm, example_inputs)
    model = ov.convert_model(ep)
    # Fixed shapes: the whole point of compiling per shape bucket is to let the backend specialise.
    model.reshape({i: ov.PartialShape(list(t.shape)) for i, t in enumerate(example_inputs)})
    config = _config(precision)
    return OpenVINOEngine(core().compile_model(model, "CPU", config), config)


def compile_dynamic(ep: torch.export.ExportedProgram, shapes: Sequence[Sequence[int | tuple[int, int]]],
                    precision: str) -> OpenVINOEngine:
    """One engine for every size within the bounds (OpenVINO's bounded dynamic shapes): per
    input, each dim a fixed size or a (low, high) range."""
    import openvino as ov

    model = ov.convert_model(ep)
    model.reshape({i: ov.PartialShape([ov.Dimension(*d) if isinstance(d, tuple) else ov.Dimension(d) for d in shape])
                   for i, shape in enumerate(shapes)})
    config = _config(precision)
    return OpenVINOEngine(core().compile_model(model, "CPU", config), config)


unavailable = requires("openvino")


TARGET = register_target(Target(
    "openvino", backend="openvino", device="CPU", supports=supports, compile=compile_partition, load=load_engine,
    description="OpenVINO CPU plugin; bf16 runs on AVX512-BF16/AMX units where present",
    unavailable=unavailable, versions=versions, compile_dynamic=compile_dynamic))
