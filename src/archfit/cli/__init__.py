"""The `archfit` command: app.py (the app, shared helpers, small commands), build.py (analyze,
compile, bench), files.py (run, generate, inspect), models.py (the MODEL argument), bench.py
(every peer side by side)."""
from .app import main

__all__ = ["main"]
