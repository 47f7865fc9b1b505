"""The `archfit` command: app.py (the app, shared helpers, small commands), build.py (analyze,
compile, bench), files.py (run, generate, inspect), models.py (the MODEL argument), bench.py
(every peer side by side)."""
from __future__ import annotations

import sys


def main(argv: list | None = None) -> None:
    """The console script. The app (typer, rich) loads inside the Ctrl-C handling: a Ctrl-C while
    it loads is the same one line as anywhere else, never a traceback."""
    try:
        from .app import main as run
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(130)
    run(argv)


__all__ = ["main"]
