"""archfit map: a compiled file over a corpus on disk. Texts through the file's tokenizer (a
sentence-transformers directory built offline), token-id list columns and .npz arrays (the
committed bucketed file, no compile); one process and local Ray give the same rows in order; a
killed run resumes writing each row once; bad rows land in the errors file with their index."""
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
import torch

import archfit
from archfit.corpus import RayOptions, RowError, map_file
from conftest import cli
from directories import SENTENCES, st_directory

BUCKETED = Path(__file__).parent / "data" / "files" / "v4" / "bucketed.archfit"  # input_ids/attention_mask, buckets 8, 16


def texts(n: int) -> list[str]:
    return [f"{SENTENCES[i % len(SENTENCES)]} {' '.join(['and the dog runs'] * (i % 7))}" for i in range(n)]


def read(folder: Path) -> pa.Table:
    return pads.dataset(folder, format="parquet").to_table()


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    """A sentence encoder with buckets and a dynamic batch of 4, compiled once from its directory
    in Python (test_text.py compiles one on the CLI)."""
    root = tmp_path_factory.mktemp("corpus")
    module = archfit.trace(st_directory(root / "encoder"), buckets=[16, 48], dynamic_batch=True, batch=4)
    assert module.sizes == (16, 48) and module.batch == 4
    archfit.save(module, root / "encoder.archfit")
    return root / "encoder.archfit"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("in") / "texts.parquet"
    rows = texts(150)
    pq.write_table(pa.table({"id": [f"doc{i}" for i in range(len(rows))], "body": rows}), path, row_group_size=40)
    return path, rows


def test_text_corpus_one_process_then_ray_gives_the_same_rows_in_order(text_file, corpus, tmp_path):
    path, rows = corpus
    r = cli("map", str(text_file), str(path), "-o", str(tmp_path / "one"), "--column", "body", "--keep", "id",
            "--shard-rows", "64")
    assert r.returncode == 0, r.stderr
    assert f"wrote {len(rows)} of {len(rows)} rows" in r.stderr
    assert sorted(p.name for p in (tmp_path / "one").glob("part-*")) == [f"part-0000{i}.parquet" for i in range(3)]
    one = read(tmp_path / "one")
    assert one.column_names == ["id", "embedding", "error"]
    assert one.column("id").to_pylist() == [f"doc{i}" for i in range(len(rows))]
    assert one.column("error").null_count == len(rows)
    want = archfit.load(text_file).encode(rows)  # the module's own batching of the same texts
    got = np.stack(one.column("embedding").to_numpy(zero_copy_only=False))
    np.testing.assert_allclose(got, want, atol=1e-5)
    # Python: rows in, one answer per row
    answers = list(archfit.map(text_file, rows[:5]))
    np.testing.assert_allclose(np.stack([a["embedding"] for a in answers]), want[:5], atol=1e-5)

    ray = pytest.importorskip("ray")
    import tempfile

    temp = tempfile.mkdtemp(prefix="ray-")  # short: Ray's socket paths must fit in 107 bytes
    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1", _temp_dir=temp)
    try:
        summary = map_file(text_file, path, tmp_path / "ray", column="body", keep=["id"], shard_rows=64,
                           ray=RayOptions(actors=2, threads=1))
        # a Ray Dataset in, a Ray Dataset of answers out
        mapped = archfit.map(text_file, ray.data.from_items([{"body": t} for t in rows[:6]]), column="body",
                             actors=1)
        got = np.stack([r["embedding"] for r in mapped.take_all()])
        np.testing.assert_allclose(got, want[:6], atol=1e-5)
    finally:
        ray.shutdown()
    assert summary.rows == summary.written == len(rows)
    assert read(tmp_path / "ray").equals(one)


def test_killed_run_resumes_and_writes_each_row_once(text_file, tmp_path):
    rows = texts(1200)
    src = tmp_path / "texts.jsonl"
    src.write_text("".join(json.dumps({"n": i, "text": t}) + "\n" for i, t in enumerate(rows)))
    out = tmp_path / "out"
    proc = subprocess.Popen([str(Path(sys.executable).parent / "archfit"), "map", str(text_file), str(src), "-o", str(out),
                             "--keep", "n", "--shard-rows", "128", "--threads", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not (out / "part-00001.parquet").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = sorted(p.name for p in out.glob("part-*.parquet"))
    assert 2 <= len(done) < 10, "the run ended before it could be killed"
    for name in done:  # every shard in place is whole
        assert pq.read_table(out / name).num_rows == 128
    r = cli("map", str(text_file), str(src), "-o", str(out), "--keep", "n", "--shard-rows", "128")
    assert r.returncode == 0, r.stderr
    assert "done before" in r.stderr
    assert not list(out.glob("*.tmp"))
    table = read(out)
    assert table.column("n").to_pylist() == list(range(len(rows)))  # each row once, in order
    assert json.loads((out / "_SUCCESS.json").read_text())["rows"] == len(rows)
    # another file or shard size is another run: refused in one line, not mixed in
    r = cli("map", str(text_file), str(src), "-o", str(out), "--shard-rows", "64")
    assert r.returncode == 1 and "holds a run with other settings (keep, shard_rows differ)" in r.stderr


def test_token_id_rows_and_bad_rows_land_in_the_errors_file(tmp_path):
    module = archfit.load(BUCKETED)
    g = np.random.default_rng(0)
    lengths = [3, 16, 9, 20, 5, 12]  # 20: over the largest bucket
    ids = [g.integers(1, 50, n).tolist() for n in lengths]
    src = tmp_path / "ids.jsonl"
    lines = [json.dumps({"input_ids": i, "attention_mask": [1] * len(i)}) for i in ids]
    lines.insert(2, "{broken")
    lines.insert(5, json.dumps({"input_ids": "seven", "attention_mask": [1]}))
    src.write_text("\n".join(lines) + "\n")
    r = cli("map", str(BUCKETED), str(src), "-o", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    assert "3 bad row(s) listed" in r.stderr
    errors = [json.loads(x) for x in (tmp_path / "out" / "_errors-00000.jsonl").read_text().splitlines()]
    assert [e["row"] for e in errors] == [2, 4, 5]  # rows: 3 9 16 tokens, broken line, 9, 20 tokens, "seven", ...
    assert "line 3: not JSON" in errors[0]["error"]
    assert "20" in errors[1]["error"] and "16" in errors[1]["error"]
    assert "column 'input_ids' holds a str" in errors[2]["error"]
    table = read(tmp_path / "out")
    assert table.num_rows == len(lines) and table.column("last_hidden_state").null_count == 3
    good = [i for i, n in enumerate(lengths) if n <= 16]
    got = [x for x in table.column("last_hidden_state").to_pylist() if x is not None]
    for row, i in zip(got, good):
        t = torch.tensor([ids[i]])
        want = module(input_ids=t, attention_mask=torch.ones_like(t)).last_hidden_state[0].numpy()
        np.testing.assert_allclose(np.array(row), want, atol=1e-5)
    r = cli("map", str(BUCKETED), str(src), "-o", str(tmp_path / "fail"), "--on-error", "fail")
    assert r.returncode == 1 and "row 2: ids.jsonl line 3: not JSON" in r.stderr
    # in Python: a bad row raises with its index, or comes out as a RowError
    rows = [{"input_ids": i, "attention_mask": [1] * len(i)} for i in ids]
    with pytest.raises(archfit.InputError, match="row 3: .*16"):
        list(archfit.map(module, rows))
    out = list(archfit.map(module, rows, on_error="skip"))
    assert isinstance(out[3], RowError) and out[3].row == 3 and out[0]["last_hidden_state"].shape == (3, 64)


def test_packed_file_packs_rows_of_any_length_up_to_its_row(tmp_path):
    packed = archfit.load(Path(__file__).parent / "data" / "files" / "v4" / "packed.archfit")  # rows of 16 tokens
    g = np.random.default_rng(4)
    ids = [g.integers(1, 50, n).tolist() for n in (3, 11, 16, 7, 1, 9, 5)]
    out = list(archfit.map(packed, [{"input_ids": i, "attention_mask": [1] * len(i)} for i in ids], chunk_rows=4))
    for i, row in zip(ids, out):
        t = torch.tensor([i])
        want = packed(input_ids=t, attention_mask=torch.ones_like(t))["last_hidden_state"][0].numpy()
        np.testing.assert_allclose(row["last_hidden_state"], want, atol=1e-5)


def test_array_inputs_from_npz(tmp_path):
    module = archfit.load(BUCKETED)
    ids = np.random.default_rng(1).integers(1, 50, (10, 8))
    np.savez(tmp_path / "ids.npz", input_ids=ids, attention_mask=np.ones_like(ids))
    r = cli("map", str(BUCKETED), str(tmp_path / "ids.npz"), "-o", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    got = read(tmp_path / "out").column("last_hidden_state").to_pylist()
    want = module(input_ids=torch.from_numpy(ids), attention_mask=torch.ones(10, 8, dtype=torch.long))
    np.testing.assert_allclose(np.array(got), want.last_hidden_state.numpy(), atol=1e-5)


def test_map_errors_are_one_line(text_file, tmp_path):
    src = tmp_path / "t.csv"
    src.write_text("a,b\nhello,world\n")
    r = cli("map", str(text_file), str(src), "-o", str(tmp_path / "o"))
    assert r.returncode == 1 and "which column holds the text? the inputs have columns a, b; name one with --column" in r.stderr
    r = cli("map", str(text_file), str(src), "-o", str(tmp_path / "o"), "--column", "b")
    assert r.returncode == 0 and "wrote 1 of 1 rows" in r.stderr
    r = cli("map", str(text_file), str(tmp_path / "nothing.parquet"), "-o", str(tmp_path / "o2"))
    assert r.returncode == 1 and "no such file or folder" in r.stderr
    (tmp_path / "x.txt").write_text("hi")
    r = cli("map", str(text_file), str(tmp_path / "x.txt"), "-o", str(tmp_path / "o3"))
    assert r.returncode == 1 and "not a format archfit map reads" in r.stderr
