"""archfit: make a PyTorch model fit an inference accelerator."""
__version__ = "0.1.0"  # before the imports: package.py records it in every file
from .buckets import BucketChoice, Buckets, choose_buckets
from .dispatch import BucketedModule
from .errors import (ArchfitError, ArtifactError, CaptureError, CompileError, InputError, ModelError, TargetError,
                     UnsupportedOpsError, ValidationError)
from .package import load, save
from .pipeline import Analysis, analyze, trace
from .report import FitReport
from .runtime import CompiledModule
from .targets import Engine, Target, get_target, list_targets, register_target
from .validate import TOLERANCES


__all__ = [
    "Analysis", "ArchfitError", "ArtifactError", "BucketChoice", "BucketedModule", "Buckets", "CaptureError",
    "CompileError", "CompiledModule", "Engine", "FitReport",
    "InputError", "ModelError", "TOLERANCES", "Target", "TargetError", "UnsupportedOpsError", "ValidationError",
    "analyze", "choose_buckets", "get_target", "list_targets", "load", "register_target", "save", "trace",
]
