"""Compile cache: a second trace of an unchanged model loads engines instead of compiling."""
import os
import subprocess
import sys
import tempfile
import textwrap

import pytest
import torch

import archfit
from archfit.core import cache
from conftest import assert_close_to_eager


@pytest.fixture(scope="module")
def small():
    """The smallest model with one partition: each trace here is about the cache, not the model."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 16)).eval()
    return model, (torch.randn(4, 32),)


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ARCHFIT_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.mark.parametrize("target", ["openvino", "onnxruntime"])
def test_second_trace_hits_the_cache(small, fresh_cache, target):
    model, inputs = small
    first = archfit.trace(model, inputs, target=target, check_payoff=False)
    assert not any(t.cached for t in first.report.timings.values())
    assert len(list(fresh_cache.glob("*.engine"))) == 1
    second = archfit.trace(model, inputs, target=target, check_payoff=False)
    assert all(t.cached for t in second.report.timings.values())
    assert "engines from the compile cache" in second.report.to_text()
    assert torch.equal(first(*inputs), second(*inputs))


def test_changed_weights_or_precision_miss_the_cache(fresh_cache):
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 8)).eval()
    x = torch.randn(2, 8)
    archfit.trace(model, (x,), target="onnxruntime", check_payoff=False)
    with torch.no_grad():
        model[0].weight.add_(1.0)
    again = archfit.trace(model, (x,), target="onnxruntime", check_payoff=False)
    assert not any(t.cached for t in again.report.timings.values())
    assert_close_to_eager(model, again, (x,))  # stale engine would fail this
    archfit.trace(model, (x,), target="inf2", precision="fp32", check_payoff=False)
    bf16 = archfit.trace(model, (x,), target="inf2", precision="bf16", check_payoff=False)
    assert not any(t.cached for t in bf16.report.timings.values())


def test_disable_and_clear(small, fresh_cache, monkeypatch):
    model, inputs = small
    archfit.trace(model, inputs, target="onnxruntime", cache=False, validate=False, check_payoff=False)
    assert not fresh_cache.exists()
    monkeypatch.setenv("ARCHFIT_CACHE", "0")
    archfit.trace(model, inputs, target="onnxruntime", validate=False, check_payoff=False)
    assert not fresh_cache.exists()
    monkeypatch.delenv("ARCHFIT_CACHE")
    archfit.trace(model, inputs, target="onnxruntime", validate=False, check_payoff=False)
    assert cache.clear() == 1 and not list(fresh_cache.glob("*.engine"))


def test_damaged_entry_is_rebuilt_not_fatal(small, fresh_cache):
    model, inputs = small
    archfit.trace(model, inputs, target="openvino", validate=False, check_payoff=False)
    (entry,) = fresh_cache.glob("*.engine")
    entry.write_bytes(b"garbage")
    again = archfit.trace(model, inputs, target="openvino", check_payoff=False)
    assert not any(t.cached for t in again.report.timings.values()) and again.report.validation.ok


def test_entry_with_other_bytes_is_named_removed_and_rebuilt(small, fresh_cache, caplog):
    """Bytes that still look like an engine never load as `cached`: every entry carries its own digest."""
    model, inputs = small
    archfit.trace(model, inputs, target="openvino", validate=False, check_payoff=False)
    (entry,) = fresh_cache.glob("*.engine")
    data = bytearray(entry.read_bytes())
    data[len(cache.MAGIC) + 65 + 500] ^= 0xFF  # one byte of the engine blob, header intact
    entry.write_bytes(bytes(data))
    with caplog.at_level("WARNING", logger="archfit.cache"):
        again = archfit.trace(model, inputs, target="openvino", validate=False, check_payoff=False)
    assert not any(t.cached for t in again.report.timings.values())
    assert f"compile cache entry {entry} fails its checksum; compiling again" in caplog.text
    assert cache.get(entry.stem, archfit.get_target("openvino")) is not None  # rebuilt and stored again


def test_read_only_cache_with_a_damaged_entry_compiles_without_writing(small, fresh_cache, monkeypatch):
    import pathlib

    model, inputs = small
    archfit.trace(model, inputs, target="openvino", validate=False, check_payoff=False)
    (entry,) = fresh_cache.glob("*.engine")
    entry.write_bytes(b"garbage")

    unlink, mkstemp = pathlib.Path.unlink, tempfile.mkstemp

    def unlink_outside(path, *a, **k):  # only the cache is read-only; torch's own files are not
        if fresh_cache in path.parents:
            raise PermissionError("read-only file system")
        return unlink(path, *a, **k)

    def mkstemp_outside(*a, dir=None, **k):
        if dir is not None and pathlib.Path(dir) == fresh_cache:
            raise PermissionError("read-only file system")
        return mkstemp(*a, dir=dir, **k)

    # root ignores directory modes, so a read-only cache is simulated at the calls that write
    monkeypatch.setattr(pathlib.Path, "unlink", unlink_outside)
    monkeypatch.setattr(tempfile, "mkstemp", mkstemp_outside)
    again = archfit.trace(model, inputs, target="openvino", check_payoff=False)
    assert again.report.validation.ok and not any(t.cached for t in again.report.timings.values())
    assert entry.read_bytes() == b"garbage"


def test_clear_removes_leftovers_of_interrupted_writes(fresh_cache):
    fresh_cache.mkdir()
    (fresh_cache / "tmpabc123.tmp").write_bytes(b"half an engine")
    (fresh_cache / "k.engine").write_bytes(b"x")
    assert cache.clear() == 1 and not list(fresh_cache.iterdir())


def test_two_processes_compiling_at_once(fresh_cache):
    script = textwrap.dedent("""
        import archfit
        import torch
        torch.manual_seed(0)
        m = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 16)).eval()
        c = archfit.trace(m, (torch.randn(4, 32),), target="onnxruntime", check_payoff=False)
        print(sum(t.cached for t in c.report.timings.values()))
    """)
    env = dict(os.environ, ARCHFIT_CACHE_DIR=str(fresh_cache))
    procs = [subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), results
    assert len(list(fresh_cache.glob("*.engine"))) == 1 and not list(fresh_cache.glob("*.tmp"))
    # a third compile, in this process (fresh_cache points it there), finds the engine they left
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 16)).eval()
    c = archfit.trace(m, (torch.randn(4, 32),), target="onnxruntime", check_payoff=False)
    assert all(t.cached for t in c.report.timings.values()) and len(c.report.timings) == 1


@pytest.mark.parametrize("target", ["openvino", "onnxruntime"])
def test_engine_from_cache_saves_and_loads(small, fresh_cache, tmp_path, target):
    """An engine imported from the cache must serialize again (OpenVINO cannot re-export an
    imported model, so the engine keeps its blob)."""
    model, inputs = small
    archfit.trace(model, inputs, target=target, validate=False, check_payoff=False)
    cached = archfit.trace(model, inputs, target=target, validate=False, check_payoff=False)
    assert all(t.cached for t in cached.report.timings.values())
    loaded = archfit.load(archfit.save(cached, tmp_path / "m.archfit"))
    assert torch.equal(loaded(*inputs), cached(*inputs))


def _trace_mlp(seed, inputs=None):
    torch.manual_seed(seed)
    m = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 16)).eval()
    return archfit.trace(m, inputs or (torch.randn(4, 32),), target="onnxruntime", validate=False, check_payoff=False)


def test_bound_evicts_least_recently_used_not_oldest_written(fresh_cache, monkeypatch):
    """Two engines, the first written used again by a later process: a bound that holds one
    keeps that one. An engine this process uses is never evicted by it."""
    x = (torch.randn(4, 32),)
    _trace_mlp(1, x)
    (a,) = fresh_cache.glob("*.engine")
    _trace_mlp(2, x)
    (b,) = set(fresh_cache.glob("*.engine")) - {a}
    os.utime(a, (1, 1000)), os.utime(b, (1, 2000))  # written in this order, a second apart
    monkeypatch.setattr(cache, "_used", set())  # a later process
    assert all(t.cached for t in _trace_mlp(1, x).report.timings.values())  # uses a again
    assert cache.evict(a.stat().st_size * 1.5) == 1  # b: written later, used less recently
    assert a.exists() and not b.exists()
    assert cache.evict(0) == 0 and a.exists()  # in use by this process: a saved model may re-read it


def test_each_write_keeps_the_bound_and_drops_stale_temporaries(fresh_cache, monkeypatch):
    fresh_cache.mkdir()
    old = fresh_cache / "0ld.engine"
    old.write_bytes(b"x" * 100_000)
    stale, live = fresh_cache / "tmpstale.tmp", fresh_cache / "tmplive.tmp"
    stale.write_bytes(b"half"), live.write_bytes(b"half")
    os.utime(old, (1, 1)), os.utime(stale, (1, 1))
    # room for the old entry or for the new engine (about 14 kB), not for both
    monkeypatch.setenv("ARCHFIT_CACHE_MAX_GB", repr(100_000 / 2**30))
    _trace_mlp(3)
    assert not old.exists() and not stale.exists() and live.exists()  # a write in progress stays
    assert len(list(fresh_cache.glob("*.engine"))) == 1


def test_engine_larger_than_the_bound_is_not_cached_and_said_so(fresh_cache, monkeypatch, caplog):
    monkeypatch.setattr(cache, "_warned", set())
    monkeypatch.setenv("ARCHFIT_CACHE_MAX_GB", "0.000001")  # about 1 KiB
    with caplog.at_level("WARNING", logger="archfit.cache"):
        _trace_mlp(4)
    assert not list(fresh_cache.glob("*.engine"))
    assert "is larger than the compile cache's bound (0.0 MiB, ARCHFIT_CACHE_MAX_GB), so it is not cached" in caplog.text


def test_full_disk_leaves_no_half_entry_and_says_so(fresh_cache, monkeypatch, caplog):
    import errno

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache, "_warned", set())
    monkeypatch.setattr(cache.os, "replace", full)
    with caplog.at_level("WARNING", logger="archfit.cache"):
        c = _trace_mlp(5)
    assert c.report.timings and not list(fresh_cache.iterdir())  # compiled; no engine, no temporary
    assert f"could not write to the compile cache {fresh_cache} (No space left on device)" in caplog.text


def test_cache_info_and_a_bad_bound(fresh_cache, monkeypatch):
    from conftest import cli

    _trace_mlp(6)
    r = cli("cache", "info")
    assert r.returncode == 0 and r.stdout.startswith(f"{fresh_cache}: 1 engine(s), ")
    assert "(bound 10.0 GiB; ARCHFIT_CACHE_MAX_GB sets it)" in r.stdout
    monkeypatch.setenv("ARCHFIT_CACHE_MAX_GB", "ten")
    r = cli("cache", "info")
    assert r.returncode == 1
    assert r.stderr.startswith("error: cache: ARCHFIT_CACHE_MAX_GB='ten' is not a size in GiB; set a number")


def test_cache_trim_applies_a_lowered_bound(fresh_cache, monkeypatch):
    from conftest import cli

    _trace_mlp(7)
    monkeypatch.setattr(cache, "_used", set())  # the engines of a process that has ended
    monkeypatch.setenv("ARCHFIT_CACHE_MAX_GB", "0")
    r = cli("cache", "trim")
    assert r.returncode == 0 and r.stdout == "removed 1 engine(s); 0 left, 0.0 MiB\n"
