"""One deployable file: save, load in a fresh process, identical outputs; safe, clear refusals."""
import json
import os
import pickle
import subprocess
import sys
import textwrap
import zipfile

import pytest
import torch

import archfit
from archfit import zoo
from archfit.artifact.container import FORMAT_VERSION

FRESH_RUN = textwrap.dedent("""
    import sys, numpy as np, torch, archfit
    {imports}
    from torch.utils import _pytree as pytree
    module = archfit.load(sys.argv[1])
    inputs = torch.load(sys.argv[2], weights_only=True)
    out = module(**inputs) if isinstance(inputs, dict) else module(*inputs)
    print(type(out).__name__)
    for i, t in enumerate(pytree.tree_flatten(out)[0]):
        np.save(f"{{sys.argv[3]}}/{{i}}.npy", t.numpy())
""")


def _fresh_process(path, inputs, tmp_path, imports=""):
    torch.save(inputs, tmp_path / "inputs.pt")
    script = tmp_path / "run.py"
    script.write_text(FRESH_RUN.format(imports=imports))
    return subprocess.run([sys.executable, str(script), str(path), str(tmp_path / "inputs.pt"), str(tmp_path)],
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("target", ["openvino", "onnxruntime"])
def test_saved_bert_loads_in_fresh_process_with_identical_outputs(tiny_bert, target, tmp_path):
    import numpy as np

    model, inputs = tiny_bert
    compiled = archfit.trace(model, inputs, target=target)
    path = archfit.save(compiled, tmp_path / "bert.archfit")
    before = torch.utils._pytree.tree_flatten(compiled(**inputs))[0]
    r = _fresh_process(path, inputs, tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "BaseModelOutputWithPoolingAndCrossAttentions"
    for i, t in enumerate(before):
        assert torch.equal(torch.from_numpy(np.load(tmp_path / f"{i}.npy")), t)


def test_custom_op_file_says_what_it_needs(mlp_custom, tmp_path):
    import numpy as np

    model, inputs = mlp_custom
    compiled = archfit.trace(model, inputs, target="openvino", check_payoff=False)
    path = archfit.save(compiled, tmp_path / "mlp.archfit")
    manifest, _ = archfit.artifact.package.read_manifest(path)
    assert manifest["custom_ops"] == ["archfit_zoo::softclip"]
    # archfit's own example op is imported from the installed package; nothing from the file runs
    r = _fresh_process(path, inputs, tmp_path)
    assert r.returncode == 0, r.stderr
    assert torch.equal(torch.from_numpy(np.load(tmp_path / "0.npy")), compiled(*inputs))


def test_unregistered_custom_op_is_named(mlp_custom, tmp_path):
    model, inputs = mlp_custom
    path = archfit.save(archfit.trace(model, inputs, target="openvino", check_payoff=False), tmp_path / "m.archfit")
    with zipfile.ZipFile(path) as zin, zipfile.ZipFile(tmp_path / "other.archfit", "w") as zout:
        for item in zin.infolist():  # the same file, as if its op came from a user's own library
            data = zin.read(item.filename)
            if item.filename == "manifest.json":
                data = data.replace(b"archfit_zoo::softclip", b"userlib::softclip")
            if item.filename == "main/host.json":
                data = data.replace(b"archfit_zoo.softclip", b"userlib.softclip")
            zout.writestr(item, data)
    manifest = json.loads(zipfile.ZipFile(tmp_path / "other.archfit").read("manifest.json"))
    import hashlib
    with zipfile.ZipFile(tmp_path / "other.archfit") as z:
        manifest["files"]["main/host.json"] = hashlib.sha256(z.read("main/host.json")).hexdigest()
    _rewrite_manifest(tmp_path / "other.archfit", tmp_path / "user.archfit", files=manifest["files"])
    _one_line_error(tmp_path / "user.archfit", r"the file needs op userlib::softclip.default, which is not registered "
                                               r"here; import the module that defines it")


def test_weights_are_stored_once(tiny_resnet18, tmp_path):
    model, inputs = tiny_resnet18
    path = archfit.save(archfit.trace(model, inputs, target="onnxruntime"), tmp_path / "r.archfit")
    weight_bytes = sum(p.numel() * p.element_size() for p in model.state_dict().values())
    assert weight_bytes < path.stat().st_size < 1.1 * weight_bytes


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    model, inputs = zoo.build("resnet18", tiny=True)
    path = tmp_path_factory.mktemp("saved") / "r18.archfit"
    return archfit.save(archfit.trace(model, inputs, target="openvino", validate=False), path)


def _one_line_error(path, match):
    with pytest.raises(archfit.ArtifactError, match=match) as e:
        archfit.load(path)
    assert "\n" not in str(e.value)


def test_truncated_file_is_refused(saved, tmp_path):
    bad = tmp_path / "truncated.archfit"
    bad.write_bytes(saved.read_bytes()[: saved.stat().st_size // 2])
    _one_line_error(bad, "is truncated, corrupted or not an archfit file")


def test_flipped_byte_is_refused(saved, tmp_path):
    data = bytearray(saved.read_bytes())
    with zipfile.ZipFile(saved) as z:
        info = z.getinfo("main/engines/target_0.bin")
    data[info.header_offset + 30 + len(info.filename) + 1000] ^= 0xFF  # inside the engine blob
    bad = tmp_path / "flipped.archfit"
    bad.write_bytes(bytes(data))
    _one_line_error(bad, r"(is corrupted|truncated, corrupted).*save it again")


def _rewrite_manifest(src, dst, **changes):
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename == "manifest.json":
                data = json.dumps(json.loads(data) | changes).encode()
            zout.writestr(item, data)


def test_future_format_version_is_refused(saved, tmp_path):
    bad = tmp_path / "future.archfit"
    _rewrite_manifest(saved, bad, format_version=FORMAT_VERSION + 1)
    _one_line_error(bad, rf"written in archfit file format {FORMAT_VERSION + 1}, .* upgrade archfit")


def test_missing_backend_is_refused(saved, tmp_path):
    bad = tmp_path / "backend.archfit"
    _rewrite_manifest(saved, bad, target="npu-from-the-future", backend="futuresdk")
    _one_line_error(bad, r"needs target 'npu-from-the-future' \(backend 'futuresdk'\), which is not usable here")


class Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickles_are_never_executed(saved, tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps(Exploit(marker))
    raw = tmp_path / "raw-pickle.archfit"
    raw.write_bytes(payload)
    _one_line_error(raw, "not an archfit file")
    torch_file = tmp_path / "torch-save.archfit"  # torch.save writes a zip holding data.pkl
    with zipfile.ZipFile(torch_file, "w") as z:
        z.writestr("archive/data.pkl", payload)
    _one_line_error(torch_file, "not an archfit file")
    smuggled = tmp_path / "smuggled.archfit"  # a real artifact whose engine blob is the pickle
    with zipfile.ZipFile(saved) as zin, zipfile.ZipFile(smuggled, "w") as zout:
        manifest = json.loads(zin.read("manifest.json"))
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename == "main/engines/target_0.bin":
                data = b'{"INFERENCE_PRECISION_HINT": "f32"}\n' + payload
                import hashlib
                manifest["files"][item.filename] = hashlib.sha256(data).hexdigest()
            if item.filename != "manifest.json":
                zout.writestr(item, data)
        zout.writestr("manifest.json", json.dumps(manifest))
    _one_line_error(smuggled, "openvino cannot load engine target_0")
    assert not marker.exists()


def test_save_refuses_what_it_cannot_store(tmp_path):
    with pytest.raises(archfit.ArtifactError, match="archfit.save takes the module archfit.trace returned"):
        archfit.save(torch.nn.Linear(2, 2), tmp_path / "x.archfit")


def _openvino_blob(isa: str | None = None, hint: str = "f32") -> bytes:
    """An engine as archfit saved OpenVINO engines before it stored IR: the config line, then the
    CPU plugin's compiled blob, its header naming `isa` instead of this CPU's when given."""
    import struct

    import openvino as ov

    config = {"INFERENCE_PRECISION_HINT": hint}
    torch.manual_seed(0)
    model = ov.convert_model(torch.nn.Linear(4, 3).eval(), example_input=torch.randn(2, 4))
    blob = ov.Core().compile_model(model, "CPU", config).export_model().getvalue()
    if isa is not None:  # magic, version, header length, then 'meta=...;isa=...'
        (size,) = struct.unpack_from("<Q", blob, 12)
        meta = blob[20:20 + size].decode().rpartition("isa=")[0].encode() + b"isa=" + isa.encode()
        blob = blob[:12] + struct.pack("<Q", len(meta)) + meta + blob[20 + size:]
    return json.dumps(config).encode() + b"\n" + blob


def test_an_openvino_engine_saved_as_a_compiled_blob_still_loads_on_its_cpu_kind():
    from archfit.targets.openvino_engine import load_engine

    engine = load_engine(_openvino_blob())
    torch.manual_seed(0)
    linear = torch.nn.Linear(4, 3).eval()
    x = torch.randn(2, 4)
    torch.testing.assert_close(engine.run([x])[0], linear(x).detach(), atol=1e-5, rtol=1e-5)


def test_an_openvino_blob_of_another_cpu_kind_is_refused_naming_it():
    from archfit.targets.openvino_engine import load_engine

    with pytest.raises(archfit.ArtifactError, match=r"compiled for another kind of CPU \(Imaginary ISA with wide units\)"
                       r" and an OpenVINO blob loads only there: compile the model again here"):
        load_engine(_openvino_blob("Imaginary ISA with wide units"))


def test_openvino_engines_are_saved_as_ir_that_any_cpu_compiles(mlp):
    """What a file carries is OpenVINO IR (XML and weights), not the CPU plugin's blob, which
    names the instruction set it was compiled for and loads nowhere else."""
    from archfit.core.engines import engines_in
    from archfit.targets.openvino_engine import IR_FORMAT, load_engine

    model, inputs = mlp
    compiled = archfit.trace(model, inputs, target="openvino", check_payoff=False, validate=False, cache=False)
    (engine,) = [m.engine for m in engines_in(compiled)]
    data = engine.serialize()
    header = json.loads(data[:data.index(b"\n")])
    assert header[IR_FORMAT] == 1 and header["config"]["INFERENCE_PRECISION_HINT"] == "f32"
    assert data[data.index(b"\n") + 1:].startswith(b"<?xml")
    again = load_engine(data)
    torch.testing.assert_close(again.run(list(inputs))[0], model(*inputs).detach(), atol=1e-5, rtol=1e-5)
    twice = load_engine(again.serialize())  # a loaded engine saves again (from the model it compiled)
    torch.testing.assert_close(twice.run(list(inputs))[0], model(*inputs).detach(), atol=1e-5, rtol=1e-5)


def test_a_bf16_openvino_file_on_a_cpu_without_bf16_units_warns_that_it_runs_fp32(monkeypatch):
    from archfit.targets import openvino_engine as ov_target

    monkeypatch.setattr(ov_target, "bf16_units", lambda: False)
    ov_target._warn_bf16_once.cache_clear()
    with pytest.warns(UserWarning, match="compiled in bf16, and this CPU has no bf16 units: OpenVINO runs them in fp32"):
        ov_target.load_engine(_openvino_blob(hint="bf16"))
    ov_target._warn_bf16_once.cache_clear()
