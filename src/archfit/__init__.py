"""archfit: make a deep-learning model fit an inference accelerator.

The public API is the straight line (`analyze`, `trace`, `trace_seq2seq`, `trace_generate`), the
deployable file (`save`, `load`), targets, bucket choice and a few types; the rest lives in
subpackages named after what they do (core, shapes, regions, seq2seq, causal, artifact, report,
targets, serve, corpus, cli, zoo)."""
from typing import TYPE_CHECKING

from ._version import __version__

# Public names and the module each lives in, imported on first use: `import archfit` (and the
# `archfit` command, whose Ctrl-C must not land inside torch's import) stays light.
_LAZY = {
    "load": "artifact", "save": "artifact", "ArchfitModule": "core.module", "CompiledModule": "core.module",
    "TOLERANCES": "core.validate", **{name: "core.accuracy" for name in ("Accuracy", "Classification", "Detection",
                                                                          "Embedding", "Tokens")},
    "Analysis": "pipeline", "TraceOptions": "core.options", "analyze": "pipeline",
    "trace": "pipeline", "trace_seq2seq": "seq2seq.trace", "trace_generate": "causal.trace", "map": "corpus", "RowError": "corpus",
    "AttachedModule": "regions", "HostRegion": "regions",
    "FitReport": "report", "BucketChoice": "shapes", "BucketedModule": "shapes", "Buckets": "shapes",
    "PackedModule": "shapes", "Packing": "shapes",
    "choose_buckets": "shapes", "ChipSpec": "targets", "Engine": "targets", "Target": "targets",
    "get_target": "targets", "list_targets": "targets", "register_target": "targets", "Seq2SeqModule": "seq2seq",
    **{name: "errors" for name in ("ArchfitError", "ArtifactError", "CaptureError", "CompileError", "InputError",
                                   "ModelError", "TargetError", "UnsupportedOpsError", "ValidationError")},
}
_SUBPACKAGES = {"artifact", "cli", "corpus", "core", "regions", "report", "seq2seq", "shapes", "targets", "zoo", "pipeline",
                "errors", "ops"}


def _hide_triton_beside_tensorflow() -> None:
    """torch imports triton for GPU kernels (its FLOP counter does, on import); triton's LLVM
    segfaults the process when TensorFlow's was loaded first, as a Keras user's script does.
    archfit compiles for CPUs and never needs triton, so it is hidden then (find_spec sees None,
    which torch takes as not installed)."""
    import sys

    if sys.modules.get("tensorflow") is not None and "triton" not in sys.modules:
        sys.modules["triton"] = None  # type: ignore[assignment]


_hide_triton_beside_tensorflow()


def _no_openvino_usage_reports() -> None:
    """OpenVINO reports usage to Google Analytics when imported and on every convert_model call
    unless the user ran its opt-out tool. On Linux each report forks the whole process and the
    child waits up to 3 s for a network answer; until it ends, every page the parent writes takes
    a copy-on-write fault. archfit converts once per partition and bucket, so those faults were
    most of its test suite's kernel time (README, Development), and its users never asked to
    report. Hidden, the package is what OpenVINO treats as not installed: it uses its own stand-in.
    If OpenVINO's converter was imported before archfit, its modules are rebound to that stand-in."""
    import sys

    sys.modules["openvino_telemetry"] = None  # type: ignore[assignment]
    if "openvino.tools.ovc" in sys.modules:
        import importlib

        _bind_openvino_telemetry(importlib.import_module("openvino.tools.ovc.telemetry_stub"))


def _bind_openvino_telemetry(tm) -> None:
    """Bind `tm` (OpenVINO's telemetry package or its stand-in) into the converter's modules
    already imported: each binds it as `tm` when imported. benchmarks/compile_time.py binds both."""
    import sys

    for name in ("convert_impl", "telemetry_utils", "utils"):
        module = sys.modules.get(f"openvino.tools.ovc.{name}")
        if module is not None and hasattr(module, "tm"):
            module.tm = tm


_no_openvino_usage_reports()


def __getattr__(name: str):
    import importlib

    _hide_triton_beside_tensorflow()
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    if name in _SUBPACKAGES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'archfit' has no attribute {name!r}")


if TYPE_CHECKING:  # what the names above are, for type checkers and editors
    from .artifact import load, save  # noqa: F401
    from .core.module import ArchfitModule, CompiledModule  # noqa: F401
    from .corpus import RowError, map  # noqa: F401
    from .core.accuracy import Accuracy, Classification, Detection, Embedding, Tokens  # noqa: F401
    from .core.validate import TOLERANCES  # noqa: F401
    from .errors import (ArchfitError, ArtifactError, CaptureError, CompileError, InputError,  # noqa: F401
                         ModelError, TargetError, UnsupportedOpsError, ValidationError)
    from .core.options import TraceOptions  # noqa: F401
    from .pipeline import Analysis, analyze, trace  # noqa: F401
    from .seq2seq.trace import trace_seq2seq  # noqa: F401
    from .causal.trace import trace_generate  # noqa: F401
    from .regions import AttachedModule, HostRegion  # noqa: F401
    from .report import FitReport  # noqa: F401
    from .seq2seq import Seq2SeqModule  # noqa: F401
    from .shapes import BucketChoice, BucketedModule, Buckets, PackedModule, Packing, choose_buckets  # noqa: F401
    from .targets import ChipSpec, Engine, Target, get_target, list_targets, register_target  # noqa: F401


__all__ = [
    "Accuracy", "Classification", "Detection", "Embedding", "Tokens", "Analysis", "ArchfitError", "ArchfitModule", "ArtifactError", "AttachedModule", "BucketChoice", "BucketedModule",
    "Buckets", "CaptureError", "ChipSpec", "CompileError", "CompiledModule", "Engine", "FitReport", "HostRegion",
    "InputError", "ModelError", "PackedModule", "Packing", "Seq2SeqModule", "TOLERANCES", "Target", "TargetError", "TraceOptions",
    "UnsupportedOpsError", "ValidationError", "__version__", "analyze", "choose_buckets", "get_target",
    "list_targets", "load", "register_target", "save", "trace", "trace_generate", "trace_seq2seq",
]
