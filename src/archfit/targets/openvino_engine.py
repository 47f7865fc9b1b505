"""The engine OpenVINO's CPU plugin runs, and its bytes in a file: OpenVINO IR compiled for the CPU
at load (files saved before IR hold a compiled blob, which loads only on the kind of CPU that
wrote it). The openvino target (targets/openvino.py) converts, quantizes and compiles; this is
what a loaded file needs."""
from __future__ import annotations

import io
import json
import threading
from functools import lru_cache
from typing import Sequence

import torch

from ..errors import ArtifactError
from .base import Engine, stream_count, thread_limit, to_numpy


@lru_cache(maxsize=1)
def core():
    import openvino as ov

    return ov.Core()


@lru_cache(maxsize=1)
def bf16_units() -> bool:
    """Does this CPU compute in bf16 (AVX512_BF16 or AMX)? Without, OpenVINO takes the bf16 hint
    and quietly runs fp32."""
    return "BF16" in core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


class OpenVINOEngine(Engine):
    """Infer requests reused across calls (one per caller running at the same time: a single
    caller always reuses the same one); inputs are shared with torch, not copied. Callers on
    several threads run in parallel when the engine was loaded with several streams
    (ARCHFIT_STREAMS, set by `archfit serve --streams`), else OpenVINO runs them in turn."""

    def __init__(self, compiled_model, config: dict, model=None):
        self.compiled_model = compiled_model
        self.config = config
        self.model = model  # the ov.Model compiled (its constants are the compiled model's: no extra memory)
        self.idle = [compiled_model.create_infer_request()]
        self.lock = threading.Lock()
        self.port_dtypes = [_port_dtype(p) for p in compiled_model.inputs]

    @classmethod
    def compile(cls, model, config: dict) -> "OpenVINOEngine":
        """`model` (an ov.Model) compiled for this CPU with `config` and this process's share of it."""
        return cls(core().compile_model(model, "CPU", config | _sharing()), config, model)

    def run(self, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        import openvino as ov

        arrays = [to_numpy(t) for t in inputs]
        with self.lock:
            request = self.idle.pop() if self.idle else self.compiled_model.create_infer_request()
        try:
            if all(a.ndim and a.dtype == d and a.flags.writeable for a, d in zip(arrays, self.port_dtypes)):
                # Why by hand: infer(list) dispatches each input through OpenVINO's Python
                # converters, half of a small engine's call (a 128x64 linear: 56 -> 29 us a call,
                # ad hoc); these inputs need none of them (their dtypes match, the memory is shared).
                for i, a in enumerate(arrays):
                    request.set_input_tensor(i, ov.Tensor(a, shared_memory=True))
                result = request.infer()
            else:  # scalars, read-only or other-typed arrays: OpenVINO's converters copy as needed
                result = request.infer(arrays, share_inputs=True)
            return [torch.from_numpy(a) for a in result.to_tuple()]  # copies: share_outputs is off
        finally:
            with self.lock:
                self.idle.append(request)

    def layers(self) -> list[tuple[str, str]]:
        """(layer type, kernel) of each layer OpenVINO's CPU plugin runs, after its own fusions:
        ("FullyConnected", "gemm_mlas_f32"), say."""
        return [(info["layerType"].astype(str), info["primitiveType"].astype(str))
                for info in (op.get_rt_info() for op in self.compiled_model.get_runtime_model().get_ordered_ops())]

    def serialize(self) -> bytes:
        """One JSON header line (the compile config, the IR's XML length), then the OpenVINO IR the
        engine was compiled from: XML, then weights. IR, not OpenVINO's compiled blob: a CPU blob
        loads only on the instruction set it was compiled on (OpenVINO refuses an AMX host's blob
        on an AVX-512 one), while compiling the IR at load takes no longer than importing a blob and
        leaves as much resident (BERT-base, fresh processes: load 2.01 against 2.14 s, 1599 against
        1594 MiB after a call, peak 411 MiB lower; benchmarks/ir_load.py, BENCHMARKS.md). The config must go along: compiled
        without it, OpenVINO falls back to its default (bf16 on bf16 CPUs)."""
        if self.model is None:
            if self.origin is None:
                raise ArtifactError("an OpenVINO engine loaded from bytes cannot be saved again; save the module "
                                    "traced or loaded from a file")
            return self.origin()
        xml, weights = _ir(self.model)
        header = {IR_FORMAT: 1, "config": self.config, "xml": len(xml)}
        return json.dumps(header).encode() + b"\n" + xml + weights


IR_FORMAT = "archfit_openvino_ir"


def _ir(model) -> tuple[bytes, bytes]:
    import tempfile
    from pathlib import Path

    import openvino as ov

    with tempfile.TemporaryDirectory() as tmp:  # OpenVINO's serializer writes files only
        ov.serialize(model, str(Path(tmp) / "m.xml"), str(Path(tmp) / "m.bin"))
        return (Path(tmp) / "m.xml").read_bytes(), (Path(tmp) / "m.bin").read_bytes()


def _port_dtype(port):
    try:
        return port.get_element_type().to_dtype()
    except Exception:  # noqa: BLE001 - string and other types numpy has no dtype for: never the fast path
        return None


def load_engine(data: bytes) -> OpenVINOEngine:
    """An engine from serialize()'s bytes: the IR compiled for this CPU, or (files saved before
    archfit stored IR) OpenVINO's compiled blob imported, which loads only on the kind of CPU it
    was compiled on."""
    import numpy as np
    import openvino as ov

    cut = data.index(b"\n")
    header = json.loads(data[:cut])
    _warn_if_bf16_runs_fp32(header.get("config", header))
    if IR_FORMAT in header:
        config, xml_end = header["config"], cut + 1 + header["xml"]
        weights = ov.Tensor(np.frombuffer(memoryview(data)[xml_end:], dtype=np.uint8))  # copied once, kept by the model
        return OpenVINOEngine.compile(core().read_model(bytes(data[cut + 1:xml_end]), weights), config)
    try:
        compiled = core().import_model(io.BytesIO(memoryview(data)[cut + 1:]), "CPU", header | _sharing())
    except RuntimeError as err:
        if "different runtime configuration" in str(err):
            raise ArtifactError(
                f"this OpenVINO engine was compiled for another kind of CPU ({_blob_isa(data[cut + 1:])}) "
                "and an OpenVINO blob loads only there: compile the model again here, or save it with this archfit "
                "(files now carry OpenVINO IR and load on any CPU)") from err
        raise
    return OpenVINOEngine(compiled, header)


def as_blob(data: bytes) -> bytes:
    """serialize()'s bytes as archfit saved OpenVINO engines before IR (the config line, then the
    compiled blob), for checking that such files still load (tests, benchmarks/ir_load.py)."""
    engine = load_engine(data)
    return json.dumps(engine.config).encode() + b"\n" + engine.compiled_model.export_model().getvalue()


@lru_cache(maxsize=1)
def _warn_bf16_once() -> None:
    import warnings

    warnings.warn("this file's OpenVINO engines were compiled in bf16, and this CPU has no bf16 units: OpenVINO "
                  "runs them in fp32 here (slower than where they were compiled, and not the numbers their gate "
                  "passed on); compile the model again on this machine for its best precision", stacklevel=3)


def _warn_if_bf16_runs_fp32(config: dict) -> None:
    """Tracing refuses bf16 where the CPU has no bf16 units; a file compiled in bf16 elsewhere
    loads, but OpenVINO quietly runs it in fp32: say so once a process."""
    if config.get("INFERENCE_PRECISION_HINT") == "bf16" and not bf16_units():
        _warn_bf16_once()


def _blob_isa(blob) -> str:
    """The instruction set a compiled blob names in its header (OpenVINO's CPU plugin: magic,
    version, length, then 'meta=...;isa=...')."""
    import struct

    (size,) = struct.unpack_from("<Q", blob, 12)
    return bytes(blob[20:20 + min(size, 400)]).decode(errors="replace").rpartition("isa=")[2] or "unknown"


def _sharing() -> dict:
    """This process's share of the machine (ARCHFIT_THREADS, ARCHFIT_STREAMS), applied when an
    engine is compiled or loaded and never stored with it. Processes sharing a machine (server
    replicas, test workers): OpenVINO pins its threads to cores by default, and on Linux every
    process pins to the same ones, so two processes would share one core."""
    limit = {"INFERENCE_NUM_THREADS": thread_limit(), "ENABLE_CPU_PINNING": False} if thread_limit() else {}
    if stream_count() > 1:  # a server running several batches at once: one stream (and its threads) each
        limit |= {"NUM_STREAMS": stream_count(), "ENABLE_CPU_PINNING": False}
    return limit
