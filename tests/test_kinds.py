"""The module-kind registry (core/kinds.py) and the one options object: a new kind is one class
with its hooks, and archfit.save, archfit.load, `archfit inspect` and the server find it by name."""
from __future__ import annotations

import pytest
import torch

import archfit
from archfit.core.kinds import kind_class, kind_names
from archfit.core.module import ArchfitModule
from archfit.errors import ArtifactError, InputError

from conftest import cli


class Scaled(ArchfitModule):
    """A kind written outside archfit: a compiled module whose outputs are scaled by a constant
    kept in the file (what a user's post-processing kind looks like)."""

    kind = "scaled_for_test"

    def __init__(self, inner, factor: float, manifest=None):
        super().__init__(inner.target, inner.precision, inner.emulated, inner.report, manifest)
        self.inner = inner
        self.factor = factor

    def forward(self, *args):
        return self.inner(*args) * self.factor

    def file_components(self):
        return {"main": self.inner}

    def file_meta(self):
        return {"factor": self.factor}

    @classmethod
    def from_file(cls, components, meta, manifest, model=None, source="the file"):
        return cls(components["main"], float(meta["factor"]), manifest)

    @classmethod
    def describe_file(cls, manifest):
        return super().describe_file(manifest) + [f"scaled by {manifest['meta']['factor']}"]


@pytest.fixture(scope="module")
def compiled_mlp():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4)).eval()
    x = torch.randn(2, 16)
    return model, x, archfit.trace(model, (x,), "onnxruntime", check_payoff=False, validate=False)


def test_a_kind_defined_outside_archfit_saves_loads_and_is_described(compiled_mlp, tmp_path):
    model, x, compiled = compiled_mlp
    assert kind_class("scaled_for_test") is Scaled and "scaled_for_test" in kind_names()
    path = archfit.save(Scaled(compiled, 3.0), tmp_path / "scaled.archfit")
    loaded = archfit.load(path)
    assert type(loaded) is Scaled and loaded.factor == 3.0 and loaded.inner.kind == "static"
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x) * 3.0, atol=1e-5, rtol=1e-5)
    shown = cli("inspect", str(path))
    assert shown.returncode == 0 and "scaled by 3.0" in shown.stdout and "buckets: none (fixed shapes)" in shown.stdout
    from archfit.serve.servable import servable

    with pytest.raises(InputError, match="a 'scaled_for_test' file cannot be served on its own"):
        servable("m", loaded)  # no adapter registered for it: refused by name


def test_a_kind_name_is_held_by_one_class():
    with pytest.raises(TypeError, match="module kind 'bucketed' is held by archfit.shapes.dispatch.BucketedModule"):
        type("Impostor", (ArchfitModule,), {"kind": "bucketed", "__module__": "elsewhere"})


def test_a_file_of_a_kind_unknown_here_is_refused_in_one_line(compiled_mlp, tmp_path):
    import json
    import zipfile

    path = archfit.save(compiled_mlp[2], tmp_path / "m.archfit")
    with zipfile.ZipFile(path) as z:  # the manifest rewritten as a newer archfit might write it
        members = {n: z.read(n) for n in z.namelist()}
    name = next(n for n in members if n.endswith("manifest.json"))
    manifest = json.loads(members[name])
    manifest["kind"] = "from_the_future"
    members[name] = json.dumps(manifest).encode()
    with zipfile.ZipFile(path, "w") as z:
        for n, data in members.items():
            z.writestr(n, data)
    with pytest.raises(ArtifactError, match="holds a 'from_the_future' model, which this archfit .* cannot load; "
                                            "upgrade archfit"):
        archfit.load(path)


def test_options_as_one_object_equal_the_keywords(compiled_mlp):
    model, x, by_keywords = compiled_mlp
    options = archfit.TraceOptions(target="onnxruntime", check_payoff=False, validate=False)
    by_object = archfit.trace(model, (x,), options=options)
    assert by_object.target == "onnxruntime" and torch.equal(by_object(x), by_keywords(x))
    # keywords beside the object set those fields of it
    assert archfit.trace(model, (x,), "openvino", options=options).target == "openvino"
    with pytest.raises(TypeError, match="unexpected option 'check_paypff'; the options are .*check_payoff"):
        archfit.trace(model, (x,), options=options, check_paypff=False)
