"""A saved file loaded and run in a fresh interpreter, for the memory and load-time columns: the
benchmark's own process holds every arm at once, so its memory says nothing about one file."""
from __future__ import annotations

import atexit
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


def scratch_dir(prefix: str) -> Path:
    """A temporary directory removed when the benchmark exits, however it exits short of a kill:
    saved files of full-size models are gigabytes, and runs that kept theirs filled the disk."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def load_and_run(path: Path, run: str) -> dict[str, float]:
    """Load `path` as `m`, exec `run` (Python using m and torch); return load seconds, resident MiB
    after the run and peak resident MiB (VmHWM), each including the interpreter with torch and the
    backends imported."""
    code = (
        "import time, torch, archfit\n"
        "t = time.perf_counter()\n"
        f"m = archfit.load({str(path)!r})\n"
        "load = time.perf_counter() - t\n"
        "with torch.no_grad():\n"
        + "".join(f"    {line}\n" for line in run.splitlines()) +
        "from archfit.cli.bench import peak_rss_mib\n"
        "now = int(open('/proc/self/statm').read().split()[1]) * 4096 / 2**20\n"
        "print(load, now, peak_rss_mib())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    load, now, peak = map(float, out.stdout.strip().splitlines()[-1].split())
    return {"load_s": load, "rss_mib": now, "peak_rss_mib": peak}
