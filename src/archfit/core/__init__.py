"""The stages every model goes through, each a function over frozen data: capture -> support ->
partition -> compile -> validate, and the static-shape module that runs the result."""
from .. import _hide_triton_beside_tensorflow

_hide_triton_beside_tensorflow()  # before torch's FLOP counter (core.cost) imports triton
from .capture import Captured  # noqa: E402 - after the triton guard, CaptureFailure, TensorSpec, capture, capture_fixed
from .compile import CompiledGraph, compile_plan
from .engines import EngineModule
from .module import ArchfitModule, CompiledModule
from .partition import Partition, PartitionPlan, plan_partitions
from .support import Reason, SupportTable, check_support
from .validate import TOLERANCES, Validation, validate

__all__ = ["ArchfitModule", "CaptureFailure", "Captured", "CompiledGraph", "CompiledModule", "EngineModule",
           "Partition", "PartitionPlan", "Reason", "SupportTable", "TOLERANCES", "TensorSpec", "Validation", "capture",
           "capture_fixed", "check_support", "compile_plan", "plan_partitions", "validate"]
