"""Files written by an earlier archfit load and answer as they did: one committed file of each
kind (tests/data/files/v4, written by tools/format_fixtures.py before the module-kind registry;
the decoder-only generator's when its kind was added),
run on the inputs stored beside it against the outputs it gave then."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import archfit
from archfit.causal import CausalLMModule
from archfit.seq2seq import Seq2SeqModule
from archfit.shapes import BucketedModule, PackedModule

from conftest import cli

FILES = Path(__file__).parent / "data" / "files" / "v4"
KINDS = {"static": archfit.CompiledModule, "bucketed": BucketedModule, "packed": PackedModule,
         "packed_dynamic": PackedModule, "seq2seq": Seq2SeqModule, "causal": CausalLMModule}


def _stored(name: str) -> tuple[dict, dict]:
    data = np.load(FILES / f"{name}.npz")
    inputs = {k.removeprefix("in."): torch.from_numpy(data[k]) for k in data.files if k.startswith("in.")}
    outputs = {k.removeprefix("out."): torch.from_numpy(data[k]) for k in data.files if k.startswith("out.")}
    return inputs, outputs


@pytest.mark.parametrize("name", sorted(KINDS))
def test_file_of_the_previous_layout_loads_and_answers_as_it_did(name):
    import archfit.zoo  # noqa: F401 - the static file's custom op (archfit_zoo::softclip) lives there

    module = archfit.load(FILES / f"{name}.archfit")
    assert isinstance(module, KINDS[name])
    inputs, want = _stored(name)
    if name in ("seq2seq", "causal"):
        got = {"output_ids": module.generate(inputs["input_ids"], attention_mask=inputs["attention_mask"],
                                             max_new_tokens=6)}
    elif name == "static":
        got = {"0": module(inputs["x"])}
    else:
        got = dict(module(**inputs))
    assert sorted(got) == sorted(want)
    for key, value in want.items():
        torch.testing.assert_close(got[key], value, atol=1e-5, rtol=1e-5, msg=f"{name}: output {key}")


@pytest.mark.parametrize("name", sorted(KINDS))
def test_inspect_describes_a_file_of_the_previous_layout(name):
    result = cli("inspect", str(FILES / f"{name}.archfit"))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[1].startswith("target: ")
    expected = {"static": "buckets: none (fixed shapes)", "bucketed": "buckets: 8, 16 over input_ids[1], "
                "attention_mask[1], dynamic batch", "packed": "packed: several sequences per row",
                "packed_dynamic": "packed: several sequences per row", "seq2seq": "seq2seq generator: source buckets [8]",
                "causal": "decoder-only generator: prompt buckets [8], decode step rows 2"}
    assert any(line.startswith(expected[name]) for line in lines), result.stdout
