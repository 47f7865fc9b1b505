"""Compile targets, one small module per backend, found by name."""
from .base import ChipSpec, Engine, Target
from .registry import get_target, list_targets, register_target

__all__ = ["ChipSpec", "Engine", "Target", "get_target", "list_targets", "register_target"]
