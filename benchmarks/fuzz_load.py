"""Coverage-guided fuzzing of archfit.load and `inspect` (read_manifest) with atheris.

The mutator is structure-aware: it takes a real saved file apart (manifest + members), mutates
one part (a JSON value of the manifest or host program replaced, dropped or retyped; bytes of a
member flipped, cut or grown; a member renamed, dropped or duplicated), then writes a consistent
file again, digests recomputed, as an attacker would. Every iteration must end in a correct load
or an ArchfitError: any other exception, an iteration over 10 s, or resident memory over 1 GiB
above the start is a finding, printed with the input saved under benchmarks/results/fuzz/.

    .venv/bin/python benchmarks/fuzz_load.py --iterations 100000      # writes RELIABILITY.md's table
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import random
import resource
import shutil
import signal
import sys
import time
import zipfile
from pathlib import Path

import atheris
import numpy  # noqa: F401 - heavy dependencies imported first, so that only archfit is instrumented
import onnxruntime  # noqa: F401
import openvino  # noqa: F401
import safetensors.torch  # noqa: F401
import torch
import transformers  # noqa: F401

from fresh import scratch_dir  # noqa: E402 - benchmarks/ is on sys.path when run as a script

with atheris.instrument_imports(include=["archfit"]):
    import archfit
    from archfit.artifact import package

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "fuzz"
TIMEOUT_S = 10
MEMORY_LIMIT_MIB = 1024


def seeds(workdir: Path) -> list[bytes]:
    """Real files of each kind the mutator starts from: a static module with a host program that
    computes (custom op between two engines), and a bucketed module on the other backend."""
    from archfit import zoo

    model, inputs = zoo.build("mlp-custom-op", tiny=True)
    files = [archfit.save(archfit.trace(model, inputs, "openvino", check_payoff=False, validate=False),
                          workdir / "mlp.archfit")]
    net = torch.nn.Sequential(torch.nn.Embedding(64, 16), torch.nn.Linear(16, 16), torch.nn.ReLU(),
                              torch.nn.Linear(16, 4)).eval()
    ids = torch.randint(0, 64, (1, 8))
    bucketed = archfit.trace(net, (ids,), "onnxruntime", buckets=archfit.Buckets({"input": 1}, sizes=(4, 8)),
                             check_payoff=False, validate=False)
    files.append(archfit.save(bucketed, workdir / "bucketed.archfit"))
    return [f.read_bytes() for f in files]


def unpack(data: bytes) -> tuple[dict, dict[str, bytes]] | None:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            manifest = json.loads(z.read("manifest.json"))
            members = {i.filename: z.read(i.filename) for i in z.infolist() if i.filename != "manifest.json"}
        return (manifest, members) if isinstance(manifest, dict) else None
    except Exception:  # noqa: BLE001 - a mutated input that is no longer a zip: start from a seed
        return None


def pack(manifest: dict, members: dict[str, bytes], consistent: bool = True) -> bytes:
    if consistent and isinstance(manifest.get("files"), dict):
        manifest["files"] = {name: hashlib.sha256(data).hexdigest() for name, data in members.items()}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("manifest.json", json.dumps(manifest))
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


_VALUES = [None, True, 0, -1, 1, 2**31, 2**63, 1e308, float("nan"), "", "x" * 300, "aten.from_file.default",
           "target_0.__class__", "../../etc/passwd", [], {}, [1] * 20, {"node": "x"}, {"tuple": []},
           {"dtype": "float32"}, {"list": [{"list": [1]}]}]


def _leaves(obj, path=()):
    """Every (path, value) of a JSON document, containers included."""
    yield path, obj
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _leaves(v, path + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _leaves(v, path + (i,))


def _set(doc, path, value):
    if not path:
        return value
    target = doc
    for key in path[:-1]:
        target = target[key]
    if value is _DROP:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return doc


_DROP = object()


def mutate_json(doc, rng: random.Random, data: bytes, seed: int):
    leaves = list(_leaves(doc))
    path, value = rng.choice(leaves)
    choice = rng.random()
    if choice < 0.4:
        new = rng.choice(_VALUES)
    elif choice < 0.55 and path:
        new = _DROP
    elif choice < 0.7 and isinstance(value, str):
        new = atheris.Mutate(value.encode(), len(value) + 16).decode("utf-8", "replace")
    elif choice < 0.85 and isinstance(value, (int, float)) and not isinstance(value, bool):
        new = rng.choice([0, -value, value * 1000, value + 1, 10**rng.randint(1, 12)])
    else:
        other_path, other = rng.choice(leaves)  # splice: a value from elsewhere in the document
        new = json.loads(json.dumps(other))
    return _set(doc, path, new)


def mutator(data: bytes, max_size: int, seed: int) -> bytes:
    rng = random.Random(seed)
    parts = unpack(data) or unpack(rng.choice(SEEDS))
    manifest, members = parts
    roll = rng.random()
    if roll < 0.35:
        manifest = mutate_json(manifest, rng, data, seed)
        if not isinstance(manifest, dict):
            manifest = {"format": "archfit", "value": manifest}
    elif roll < 0.6:
        hosts = [n for n in members if n.endswith("host.json")]
        if hosts:
            name = rng.choice(hosts)
            try:
                members[name] = json.dumps(mutate_json(json.loads(members[name]), rng, data, seed)).encode()
            except (ValueError, RecursionError):
                members[name] = atheris.Mutate(members[name], len(members[name]) + 64)
    elif roll < 0.85 and members:
        name = rng.choice(sorted(members))
        blob = members[name]
        members[name] = atheris.Mutate(blob, max(len(blob) * 2, 64))
    elif members:
        name = rng.choice(sorted(members))
        action = rng.choice(["drop", "rename", "duplicate"])
        blob = members.pop(name)
        if action == "rename":
            members[name + rng.choice(["x", "/../x", ".bin"])] = blob
        elif action == "duplicate":
            members[name] = blob
            members[name + "2"] = blob
    consistent = rng.random() < 0.95  # mostly files an attacker made consistent; sometimes not
    return pack(manifest, members, consistent)


class Timeout(Exception):
    pass


def _alarm(_signum, _frame):
    raise Timeout()


STATS = {"iterations": 0, "loaded": 0, "refused": 0, "findings": 0, "slowest_s": 0.0}
FINDINGS: list[str] = []


def one_input(data: bytes) -> None:
    STATS["iterations"] += 1
    path = WORKDIR / "fuzz.archfit"
    path.write_bytes(data)
    t0 = time.perf_counter()
    signal.alarm(TIMEOUT_S)
    try:
        try:
            package.read_manifest(path)
            module = archfit.load(path)
            STATS["loaded"] += 1
            del module
        except archfit.ArchfitError:
            STATS["refused"] += 1
        finally:
            signal.alarm(0)
    except Timeout:
        _finding(data, f"hang over {TIMEOUT_S} s")
    except Exception as e:  # noqa: BLE001 - exactly what the fuzzer looks for
        _finding(data, f"{type(e).__name__}: {str(e)[:200]}")
    STATS["slowest_s"] = max(STATS["slowest_s"], time.perf_counter() - t0)
    rss = _rss_mib()
    if rss - BASE_RSS > MEMORY_LIMIT_MIB:
        _finding(data, f"resident memory {rss:.0f} MiB, {rss - BASE_RSS:.0f} MiB over the start")
    if STATS["iterations"] >= ARGS.iterations:
        report()
        shutil.rmtree(WORKDIR, ignore_errors=True)  # os._exit skips scratch_dir's atexit
        os._exit(0)


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _finding(data: bytes, what: str) -> None:
    STATS["findings"] += 1
    OUT.mkdir(parents=True, exist_ok=True)
    name = OUT / f"finding-{hashlib.sha256(data).hexdigest()[:16]}.archfit"
    name.write_bytes(data)
    FINDINGS.append(f"{what} ({name.relative_to(ROOT)})")
    print(f"FINDING: {what} -> {name}", file=sys.stderr, flush=True)


def report() -> None:
    seconds = time.perf_counter() - START
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = STATS | {"seconds": round(seconds, 1), "peak_rss_mib": round(peak), "start_rss_mib": round(BASE_RSS),
                      "findings_list": FINDINGS, "archfit": archfit.__version__, "torch": torch.__version__}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "summary.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


def main() -> None:
    global ARGS, SEEDS, WORKDIR, BASE_RSS, START
    parser = argparse.ArgumentParser()
    parser.add_argument("--iterations", type=int, default=100_000)
    ARGS, rest = parser.parse_known_args()
    torch.set_num_threads(1)
    WORKDIR = scratch_dir("archfit-fuzz-")
    os.environ["ARCHFIT_CACHE"] = "0"
    SEEDS = seeds(WORKDIR)
    for data in SEEDS:  # the seeds themselves must load
        (WORKDIR / "seed.archfit").write_bytes(data)
        archfit.load(WORKDIR / "seed.archfit")
    signal.signal(signal.SIGALRM, _alarm)
    BASE_RSS = _rss_mib()
    START = time.perf_counter()
    corpus = WORKDIR / "corpus"
    corpus.mkdir()
    for i, data in enumerate(SEEDS):
        (corpus / f"seed{i}").write_bytes(data)
    atheris.Setup([sys.argv[0], str(corpus), "-max_len=4000000", "-rss_limit_mb=0", "-timeout=0", *rest],
                  one_input, custom_mutator=mutator)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
