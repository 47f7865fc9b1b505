"""archfit: make a deep-learning model fit an inference accelerator.

The public API is the straight line (`analyze`, `trace`, `trace_seq2seq`), the deployable file
(`save`, `load`), targets, bucket choice and a few types; the rest lives in subpackages named
after what they do (core, shapes, regions, seq2seq, artifact, report, targets, cli, zoo)."""
from ._version import __version__
from .artifact import load, save
from .core.module import ArchfitModule, CompiledModule
from .core.validate import TOLERANCES
from .errors import (ArchfitError, ArtifactError, CaptureError, CompileError, InputError, ModelError, TargetError,
                     UnsupportedOpsError, ValidationError)
from .pipeline import Analysis, TraceOptions, analyze, trace, trace_seq2seq
from .regions import AttachedModule, HostRegion
from .report import FitReport
from .shapes import BucketChoice, BucketedModule, Buckets, choose_buckets
from .targets import ChipSpec, Engine, Target, get_target, list_targets, register_target


def __getattr__(name: str):
    # Seq2SeqModule imports transformers: loaded on first use so `import archfit` stays light.
    if name == "Seq2SeqModule":
        from .seq2seq import Seq2SeqModule

        return Seq2SeqModule
    raise AttributeError(f"module 'archfit' has no attribute {name!r}")


__all__ = [
    "Analysis", "ArchfitError", "ArchfitModule", "ArtifactError", "AttachedModule", "BucketChoice", "BucketedModule",
    "Buckets", "CaptureError", "ChipSpec", "CompileError", "CompiledModule", "Engine", "FitReport", "HostRegion",
    "InputError", "ModelError", "Seq2SeqModule", "TOLERANCES", "Target", "TargetError", "TraceOptions",
    "UnsupportedOpsError", "ValidationError", "__version__", "analyze", "choose_buckets", "get_target",
    "list_targets", "load", "register_target", "save", "trace", "trace_seq2seq",
]
