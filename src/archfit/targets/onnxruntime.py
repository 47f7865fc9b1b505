"""ONNX Runtime, CPU execution provider. A node is supported when torch.onnx's exporter can
lower it: it has a torchlib ONNX function, or a decomposition into ops that do."""
from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
import warnings
import zipfile
from functools import lru_cache
from typing import Sequence

import torch
from torch import fx

from ..precision import emulate_bf16
from .base import Target, export_partition, listed_or_decomposed, to_numpy
from .registry import register_target


@lru_cache(maxsize=1)
def _registry():
    from torch.onnx._internal.exporter._registration import ONNXRegistry

    return ONNXRegistry.from_torchlib()


@lru_cache(maxsize=None)
def _listed(op) -> bool:
    return _registry().is_registered(op)


supports = listed_or_decomposed(_listed, "torch.onnx's torchlib registry")


def _session_options():
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    # Idle ORT workers spin by default, stealing the cores PyTorch needs for the host regions
    # that run between engine calls; archfit always mixes the two, so they sleep instead.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return opts


class OnnxRuntimeEngine:
    """`data` is an ONNX model, or for models over protobuf's 2 GB limit a zip of the model and
    its external weight file (ONNX's own external-data layout)."""

    def __init__(self, data: bytes):
        import onnxruntime as ort

        self.data = data
        self._dir = None
        source = data
        if data[:2] == b"PK":  # zip: ONNX protobufs start with a field tag, never with 'PK'
            self._dir = tempfile.TemporaryDirectory(prefix="archfit-onnx-")
            with zipfile.ZipFile(io.BytesIO(data)) as z:
                z.extractall(self._dir.name)
            source = os.path.join(self._dir.name, "model.onnx")
        self.session = ort.InferenceSession(source, sess_options=_session_options(), providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]

    def serialize(self) -> bytes:
        return self.data

    def run(self, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        feeds = {name: to_numpy(t) for name, t in zip(self.input_names, inputs)}
        return [torch.from_numpy(a) for a in self.session.run(None, feeds)]


@contextlib.contextmanager
def _quiet():
    """torch.onnx and onnxscript print progress and optimizer notes; archfit reports instead."""
    names = ("torch.onnx", "onnxscript", "onnx_ir", "torch.export")
    levels = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for n, lvl in levels.items():
            logging.getLogger(n).setLevel(lvl)


def compile_partition(gm: fx.GraphModule, example_inputs: Sequence[torch.Tensor], precision: str) -> OnnxRuntimeEngine:
    if precision == "bf16":
        # ORT's CPU provider has no bf16 matmul/conv kernels: round their inputs and outputs to
        # bf16 instead, which gives the numerics of bf16 compute with fp32 accumulation.
        gm = emulate_bf16(gm)
    with _quiet():
        program = torch.onnx.export(export_partition(gm, example_inputs), dynamo=True, optimize=True, verbose=False)
    from google.protobuf.message import EncodeError

    try:
        return OnnxRuntimeEngine(program.model_proto.SerializeToString())
    except (EncodeError, ValueError):  # over protobuf's 2 GB limit: weights go to an external data file
        with tempfile.TemporaryDirectory(prefix="archfit-onnx-") as tmp:
            program.save(os.path.join(tmp, "model.onnx"), external_data=True)
            buf = io.BytesIO()
            with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as z:
                for name in sorted(os.listdir(tmp)):
                    z.write(os.path.join(tmp, name), name)
        return OnnxRuntimeEngine(buf.getvalue())


def versions() -> dict:
    import onnx
    import onnxruntime
    import onnxscript

    return {"onnxruntime": onnxruntime.__version__, "onnx": onnx.__version__, "onnxscript": onnxscript.__version__}


def _unavailable() -> str | None:
    try:
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as e:
        return f"a package does not import ({e}); pip install onnxruntime onnxscript"
    return None


TARGET = register_target(
    Target(
        name="onnxruntime",
        backend="onnxruntime",
        device="CPU",
        description="ONNX Runtime CPU execution provider, via torch.onnx (dynamo exporter)",
        supports=supports,
        compile=compile_partition,
        unavailable=_unavailable,
        load=OnnxRuntimeEngine,
        versions=versions,
    )
)
