"""The file as a container: sizes checked before inflating, JSON capped, outputs only to regular
files or new paths, written with the user's umask."""
import json
import os
import shutil
import zipfile

import pytest
import torch

import archfit
from archfit.artifact import container


def _one_line(path, match):
    with pytest.raises(archfit.ArtifactError, match=match) as e:
        archfit.load(path)
    assert "\n" not in str(e.value)


def test_decompression_bomb_is_refused_before_inflating(tmp_path):
    bomb = tmp_path / "bomb.archfit"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("manifest.json", json.dumps({"format": "archfit", "format_version": container.FORMAT_VERSION,
                                                "files": {"big": "0" * 64}}))
        z.writestr("big", b"\0" * (64 * 2**20))  # 64 MiB of zeros deflates to ~64 KiB
    assert bomb.stat().st_size < 2**20
    _one_line(bomb, "refused as a decompression bomb")


def test_deep_and_oversized_json_are_refused(tmp_path):
    deep = tmp_path / "deep.archfit"
    with zipfile.ZipFile(deep, "w") as z:
        z.writestr("manifest.json", "[" * 100_000 + "]" * 100_000)
    _one_line(deep, "nested too deep")
    with pytest.raises(archfit.ArtifactError, match="over the 10-byte limit"):
        container.parse_json(b"[1, 2, 3, 4, 5]", "x.json", "f", limit=10)


def test_older_format_is_refused_with_what_to_do(saved_mlp, tmp_path):
    old = tmp_path / "old.archfit"
    with zipfile.ZipFile(saved_mlp) as zin, zipfile.ZipFile(old, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename == "manifest.json":
                data = json.dumps(json.loads(data) | {"format_version": 3}).encode()
            zout.writestr(item, data)
    _one_line(old, "format 3, .* reads format 4; compile the model again")


@pytest.mark.parametrize("field, value", [("components", []), ("meta", None), ("precision", None),
                                          ("components", {"main": {"modules": "x"}}), ("kind", ["module"])])
def test_malformed_manifest_values_are_one_line(saved_mlp, tmp_path, field, value):
    bad = tmp_path / "bad.archfit"
    with zipfile.ZipFile(saved_mlp) as zin, zipfile.ZipFile(bad, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename == "manifest.json":
                data = json.dumps(json.loads(data) | {field: value}).encode()
            zout.writestr(item, data)
    with pytest.raises(archfit.ArtifactError) as e:
        archfit.load(bad)
    assert "\n" not in str(e.value)


def test_outputs_that_are_not_regular_files_are_refused(saved_mlp, tmp_path):
    module = archfit.load(saved_mlp)
    for path, match in ((tmp_path, "is a directory"), ("/dev/null", "is not a regular file"),
                        (tmp_path / "missing" / "m.archfit", "does not exist; create it first")):
        with pytest.raises(archfit.ArtifactError, match=match):
            archfit.save(module, path)
    assert os.path.exists("/dev/null") and not os.path.isfile("/dev/null")


def test_saved_file_follows_the_umask(saved_mlp, tmp_path):
    old = os.umask(0o022)
    try:
        path = archfit.save(archfit.load(saved_mlp), tmp_path / "m.archfit")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def _as_blobs(path, out):
    """`path` with its OpenVINO engines stored as archfit stored them before IR: the config line,
    then OpenVINO's compiled blob (which it cannot export again once imported)."""
    from archfit.targets.openvino_engine import as_blob

    manifest, files = container.read(path)
    manifest.pop("files")
    return container.write(out, manifest, {n: as_blob(d) if n.endswith(".bin") else d for n, d in files.items()})


def test_a_loaded_module_saves_again_and_answers_the_same(saved_mlp, mlp_custom, tmp_path):
    # loaded OpenVINO engines keep the IR they compiled (its constants are the compiled model's):
    # saving again writes it, whatever became of the file since
    model, inputs = mlp_custom
    source = tmp_path / "source.archfit"
    shutil.copy(saved_mlp, source)
    module = archfit.load(source)
    source.write_bytes(b"not the same file")
    again = archfit.load(archfit.save(module, tmp_path / "again.archfit"))
    torch.testing.assert_close(again(*inputs), module(*inputs), rtol=0, atol=0)


def test_a_loaded_blob_file_saves_again_from_its_file_and_refuses_once_the_file_changed(saved_mlp, mlp_custom,
                                                                                        tmp_path):
    # engines imported from an OpenVINO blob (files saved before IR) do not keep their bytes in
    # memory: saving again re-reads them from the file, checked against the digest it had when loaded
    model, inputs = mlp_custom
    source = _as_blobs(saved_mlp, tmp_path / "source.archfit")
    module = archfit.load(source)
    torch.testing.assert_close(module(*inputs), archfit.load(saved_mlp)(*inputs), rtol=0, atol=0)
    again = archfit.load(archfit.save(module, tmp_path / "again.archfit"))
    torch.testing.assert_close(again(*inputs), module(*inputs), rtol=0, atol=0)
    source.write_bytes(b"not the same file")
    with pytest.raises(archfit.ArtifactError, match="source.archfit changed or went away since it was loaded .*; "
                                                    "load it again before saving this module"):
        archfit.save(module, tmp_path / "third.archfit")
    assert not (tmp_path / "third.archfit").exists()


def test_inspect_drops_terminal_escapes():
    from archfit.cli.files import _printable

    assert _printable("ok\x1b]0;pwned\x07\x1b[2J done\n") == "ok]0;pwned[2J done\n"
