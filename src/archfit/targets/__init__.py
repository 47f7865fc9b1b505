"""Compile targets, one small module per backend."""
from .base import Engine, Target
from .registry import get_target, list_targets, register_target

__all__ = ["Engine", "Target", "get_target", "list_targets", "register_target"]
