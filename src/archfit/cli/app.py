"""`archfit` command line: maps commands onto the pipeline, prints one line on error. The
commands live in build.py (analyze, compile, bench), files.py (run, generate, inspect), corpus.py
(map) and serving.py (serve)."""
from __future__ import annotations

import json
import os
import sys
import time
from contextlib import contextmanager
from typing import Optional

import typer

from ..errors import ArchfitError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Make a PyTorch model fit an inference accelerator.")
cache_app = typer.Typer(help="The on-disk compile cache.", no_args_is_help=True)
app.add_typer(cache_app, name="cache")

MODEL_HELP = ("A built-in model name (see `archfit models`), path/to/file.py:function returning "
              "(model, example_inputs), a torch.export program saved as .pt2, an ONNX file (.onnx) or a "
              "TensorFlow SavedModel directory (open dims: batch 1, length 128 unless --vary/--buckets set them), or a "
              "Hugging Face / sentence-transformers directory (its tokenizer makes the example inputs; see --task), a "
              "Keras .keras/.h5 file, or torchvision:NAME / timm:NAME (see --weights).")
TASK_HELP = ("Hugging Face directories: the task (feature-extraction, fill-mask, text-classification, "
             "token-classification, question-answering; default: from config.json's architectures; "
             "text2text-generation directories compile with --generate).")
LENGTH_HELP = "Hugging Face directories: tokens in the example inputs (default 128, or the model's limit)."
WEIGHTS_HELP = ("torchvision:NAME and timm:NAME: a state dict to load (.safetensors, or a torch file read with "
                "weights_only=True); default: random weights.")


def fail(err: Exception) -> None:
    typer.echo(f"error: {err}", err=True)
    raise typer.Exit(1)


def emit(data) -> None:
    typer.echo(json.dumps(data, indent=2, default=str))


@contextmanager
def progress_line(enabled: bool):
    """A status line with elapsed time on a terminal; silent in pipes and CI."""
    if not (enabled and sys.stderr.isatty() and not os.environ.get("CI")):
        yield None
        return
    from rich.console import Console

    console = Console(stderr=True)
    start = time.perf_counter()
    with console.status("starting") as status:
        yield lambda msg: status.update(f"{msg}  [{time.perf_counter() - start:.0f} s]")


@app.command()
def targets():
    """Targets known to archfit and whether each is usable here."""
    from ..targets import list_targets

    for t in list_targets():
        why = t.unavailable()
        status = "available" if not why else f"unavailable: {why}"
        typer.echo(f"{t.name:12} {t.device:12} {status}  - {t.description}")


@app.command()
def models():
    """Built-in models (use --tiny for the test-size variant)."""
    from .. import zoo

    for n in zoo.names():
        m = zoo.get(n)
        typer.echo(f"{n:16} {m.family:10} {m.description}")


@cache_app.command("clear")
def cache_clear():
    """Delete every cached engine."""
    from ..core import cache

    typer.echo(f"removed {cache.clear()} cached engine(s) from {cache.cache_dir()}")


@cache_app.command("trim")
def cache_trim():
    """Remove least recently used engines down to the bound now (each compile does this too)."""
    from ..core import cache

    removed = cache.evict()
    count, size, _ = cache.info()
    typer.echo(f"removed {removed} engine(s); {count} left, {cache.size_text(size)}")


@cache_app.command("info")
def cache_info():
    """Where the cache is, how many engines it holds, their size and the bound (ARCHFIT_CACHE_MAX_GB)."""
    from ..core import cache

    root = cache.cache_dir()
    if root is None:
        typer.echo("disabled (ARCHFIT_CACHE=0)")
        return
    count, size, limit = cache.info()
    bound = "no bound" if limit == float("inf") else f"bound {cache.size_text(limit)}"
    typer.echo(f"{root}: {count} engine(s), {cache.size_text(size)} ({bound}; ARCHFIT_CACHE_MAX_GB sets it)")


@cache_app.command("where")
def cache_where():
    """Print the cache directory (ARCHFIT_CACHE_DIR; ARCHFIT_CACHE=0 disables it)."""
    from ..core import cache

    typer.echo(str(cache.cache_dir() or "disabled (ARCHFIT_CACHE=0)"))


def _interrupted(err: BaseException) -> bool:
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, KeyboardInterrupt):
            return True
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return False


def main(argv: Optional[list] = None) -> None:
    try:
        from . import build, corpus, files, serving  # noqa: F401 - their commands register on `app`

        app(args=argv, standalone_mode=True)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except ArchfitError as e:  # any command's own error (one line), where the command did not catch it itself
        typer.echo(f"error: {e}", err=True)
        sys.exit(1)
    except Exception as e:  # noqa: BLE001 - a bug of ours still gets one line; the traceback on request
        if _interrupted(e):  # Ctrl-C inside an import can surface as another error raised while unwinding
            typer.echo("interrupted", err=True)
            sys.exit(130)
        if os.environ.get("ARCHFIT_DEBUG"):
            raise
        from ..errors import first_line

        first = first_line(e)
        typer.echo(f"error: internal: {type(e).__name__}: {first} (run with ARCHFIT_DEBUG=1 for the traceback "
                   f"and please report it)", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
