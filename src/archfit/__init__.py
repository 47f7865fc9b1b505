"""archfit: make a PyTorch model fit an inference accelerator."""
from .errors import (ArchfitError, CaptureError, CompileError, InputError, ModelError, TargetError,
                     UnsupportedOpsError, ValidationError)
from .pipeline import Analysis, analyze, trace
from .report import FitReport
from .runtime import CompiledModule
from .targets import Engine, Target, get_target, list_targets, register_target
from .validate import TOLERANCES

__version__ = "0.1.0"

__all__ = [
    "Analysis", "ArchfitError", "CaptureError", "CompileError", "CompiledModule", "Engine", "FitReport",
    "InputError", "ModelError", "TOLERANCES", "Target", "TargetError", "UnsupportedOpsError", "ValidationError",
    "analyze", "get_target", "list_targets", "register_target", "trace",
]
