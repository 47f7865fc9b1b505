"""Seq2seq generation: the model cut into fixed-shape parts (parts.py) and the decoding loop
that runs on the host around their compiled engines (generate.py). Imports transformers."""
from .generate import Seq2SeqModule
from .parts import DecoderStep, EncodeCross, check_seq2seq, step_example

__all__ = ["DecoderStep", "EncodeCross", "Seq2SeqModule", "check_seq2seq", "step_example"]
