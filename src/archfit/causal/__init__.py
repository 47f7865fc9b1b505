"""Decoder-only generation: prefill per prompt bucket, a decode step over a host cache."""
from .module import CausalLMModule

__all__ = ["CausalLMModule"]
