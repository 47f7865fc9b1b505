"""archfit: make a PyTorch model fit an inference accelerator."""
__version__ = "0.1.0"  # before the imports: package.py records it in every file
from .buckets import BucketChoice, Buckets, choose_buckets
from .dispatch import BucketedModule
from .errors import (ArchfitError, ArtifactError, CaptureError, CompileError, InputError, ModelError, TargetError,
                     UnsupportedOpsError, ValidationError)
from .package import load, save
from .pipeline import Analysis, analyze, trace
from .report import FitReport
from .regions import AttachedModule, HostRegion
from .runtime import CompiledModule
from .targets import Engine, Target, get_target, list_targets, register_target
from .validate import TOLERANCES


# Seq2seq generation imports transformers; loaded on first use so `import archfit` stays light.
_LAZY = {"trace_seq2seq": ("seq2seq", "trace_seq2seq"), "Seq2SeqModule": ("generation", "Seq2SeqModule")}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(f".{module}", __name__), attr)
    raise AttributeError(f"module 'archfit' has no attribute {name!r}")


__all__ = [
    "Analysis", "AttachedModule", "HostRegion", "ArchfitError", "ArtifactError", "BucketChoice", "BucketedModule", "Buckets", "CaptureError",
    "CompileError", "CompiledModule", "Engine", "FitReport",
    "InputError", "ModelError", "Seq2SeqModule", "TOLERANCES", "Target", "TargetError", "UnsupportedOpsError", "ValidationError",
    "analyze", "choose_buckets", "get_target", "list_targets", "load", "register_target", "save", "trace", "trace_seq2seq",
]
