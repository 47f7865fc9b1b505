"""`archfit map`: a compiled file over a corpus on disk, into resumable Parquet shards."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from .app import app


@app.command("map")
def map_(file: Path = typer.Argument(..., help="A file written by `archfit compile -o`."),
         inputs: Path = typer.Argument(..., help="A Parquet, CSV or JSON Lines file, .npy/.npz arrays, or a folder of "
                                                 "files of one of those formats."),
         output: Path = typer.Option(..., "--output", "-o", help="The folder of Parquet shards to write (a re-run "
                                                                  "into it skips the finished shards)."),
         column: Optional[str] = typer.Option(None, help="The text column (default: 'text', or the only string "
                                                         "column), or the column of a model's sole input."),
         keep: List[str] = typer.Option([], "--keep", help="An input column copied to the output (an id), repeatable."),
         shard_rows: int = typer.Option(8192, help="Rows per output shard: the unit a re-run skips."),
         on_error: str = typer.Option("skip", help="A bad row: skip (listed in _errors-*.jsonl with its row index, "
                                                   "its output row null) or fail (stop there)."),
         overwrite: bool = typer.Option(False, help="Start again in a folder holding a run with other settings."),
         threads: Optional[int] = typer.Option(None, help="Engine threads (default: all cores; with --ray: per "
                                                          "actor, default 1)."),
         ray: bool = typer.Option(False, "--ray", help="Run on Ray Data (pip install 'ray[data]')."),
         address: Optional[str] = typer.Option(None, help="With --ray: the cluster to join ('auto' after `ray "
                                                          "start`); default: a local Ray instance."),
         actors: int = typer.Option(2, help="With --ray: actors, each loading the file once.")):
    """Run a compiled file over a corpus: one output row per input row, in order (texts through the
    file's tokenizer, token-id list columns, arrays), written as Parquet shards; bad rows listed
    with their index; Ctrl-C or a crash loses no finished shard."""
    from ..corpus import RayOptions, map_file
    from ..serve.app import engine_threads

    options = RayOptions(address, actors, threads or 1) if ray else None
    if not ray:
        engine_threads(threads)
    with _progress() as progress:
        summary = map_file(file, inputs, output, column=column, keep=keep, shard_rows=shard_rows,
                           on_error=on_error, overwrite=overwrite, ray=options, progress=progress)
    rate = summary.written / summary.seconds if summary.seconds else 0.0
    bad = f"; {summary.errors} bad row(s) listed in {output}/_errors-*.jsonl" if summary.errors else ""
    skipped = summary.rows - summary.written
    before = f" ({skipped} done before)" if skipped else ""
    typer.echo(f"wrote {summary.written} of {summary.rows} rows{before} to {output} in {summary.seconds:.1f} s "
               f"({rate:.1f} rows/s){bad}", err=True)


class _progress:
    """A bar with rows/s and the ETA on a terminal; nothing in pipes and CI."""

    def __enter__(self):
        import os

        if not sys.stderr.isatty() or os.environ.get("CI"):
            return None
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn,
                                   TimeRemainingColumn)

        self.bar = Progress(TextColumn("rows"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
                            TextColumn("{task.fields[rate]}"),
                            TimeRemainingColumn(), transient=True)
        self.bar.start()
        self.task = self.bar.add_task("rows", total=None, rate="")
        return self.update

    def update(self, done: int, total: int | None) -> None:
        speed = self.bar.tasks[0].speed
        self.bar.update(self.task, completed=done, total=total, rate=f"{speed:.0f} rows/s" if speed else "")

    def __exit__(self, *exc):
        if hasattr(self, "bar"):
            self.bar.stop()
        return False
