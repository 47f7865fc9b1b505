"""The output folder of `archfit map`: Parquet shards of a fixed number of rows (part-00000.parquet
holds rows 0..shard_rows-1), each written to a temporary name and renamed when whole, so a run
killed at any point leaves every finished shard intact and no half-written one; a re-run with the
same settings skips the finished shards. Bad rows of a shard are listed with their row index in
_errors-00000.jsonl (a leading underscore: Parquet readers of the folder pass over it), renamed into
place before the shard itself."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

from ..errors import InputError

SETTINGS = "_archfit_map.json"
DONE = "_SUCCESS.json"


def shard_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


def errors_name(index: int) -> str:
    return f"_errors-{index:05d}.jsonl"


class Shards:
    """One run's output folder. `settings` must match the folder's to resume in it; `overwrite`
    starts again whatever the folder holds (of archfit map's)."""

    def __init__(self, folder: str | Path, settings: dict, shard_rows: int, overwrite: bool = False):
        self.folder, self.shard_rows = Path(folder), shard_rows
        mine = self.folder / SETTINGS
        if self.folder.exists() and not self.folder.is_dir():
            raise InputError(f"output {self.folder} is a file; archfit map writes a folder of Parquet shards")
        if self.folder.is_dir() and any(self.folder.iterdir()):
            if not mine.is_file():
                raise InputError(f"output {self.folder} holds files archfit map did not write; give an empty or new "
                                 f"folder")
            before = json.loads(mine.read_text())
            if overwrite:
                self._clear()
            elif before != settings and not any(self.folder.glob("part-*.parquet")):
                self._clear()  # a run that failed before its first shard: nothing to keep
            elif before != settings:
                changed = sorted(k for k in set(before) | set(settings) if before.get(k) != settings.get(k))
                raise InputError(f"output {self.folder} holds a run with other settings ({', '.join(changed)} "
                                 f"differ); pass --overwrite to start again, or give another folder")
        self.folder.mkdir(parents=True, exist_ok=True)
        for stale in self.folder.glob("*.tmp"):  # a run killed mid-shard
            stale.unlink()
        (self.folder / DONE).unlink(missing_ok=True)
        _replace_text(mine, json.dumps(settings, indent=1))
        self.finished = {int(p.stem.split("-")[1]) for p in self.folder.glob("part-*.parquet")}

    def _clear(self) -> None:
        for p in self.folder.iterdir():
            if p.is_file() and (p.name.startswith(("part-", "_errors-")) or p.name in (SETTINGS, DONE)
                                or p.suffix == ".tmp"):
                p.unlink()

    def done(self, row: int) -> bool:
        """Whether the shard holding `row` is already written."""
        return row // self.shard_rows in self.finished

    def errors_written(self) -> list[dict]:
        out = []
        for p in sorted(self.folder.glob("_errors-*.jsonl")):
            out += [json.loads(line) for line in p.read_text().splitlines() if line]
        return out

    def finish(self, summary: dict) -> None:
        _replace_text(self.folder / DONE, json.dumps(summary, indent=1))


class ShardWriter:
    """Takes a run's output tables in row order and writes them into shards; rows of finished
    shards (a re-run) are passed over. `on_error='fail'` stops at the first bad row, its shard
    unwritten."""

    def __init__(self, shards: Shards, on_error: str = "skip", progress=None):
        self.shards, self.on_error, self.progress = shards, on_error, progress
        self.index: int | None = None
        self.writer = None
        self.errors: list[dict] = []
        self.rows = self.written = self.failed = 0

    def add(self, start: int, table) -> None:
        """Rows start..start+len(table)-1 (a table of None: rows skipped, their shard finished)."""
        n = self.shards.shard_rows
        rows = table.num_rows if table is not None else 0
        offset = 0
        while offset < rows:
            row = start + offset
            take = min(rows - offset, n - row % n)
            if not self.shards.done(row):
                self._write(row // n, row, table.slice(offset, take))
            offset += take
        self.rows = max(self.rows, start + rows)
        if self.progress is not None:
            self.progress(start + rows)

    def skip(self, start: int, count: int) -> None:
        self.rows = max(self.rows, start + count)
        if self.progress is not None:
            self.progress(start + count)

    def _write(self, index: int, row: int, table) -> None:
        import pyarrow.parquet as pq

        if index != self.index:
            self._close()
            self.index = index
            self.writer = pq.ParquetWriter(self._tmp(shard_name(index)), table.schema)
        errors = table.column("error")
        if errors.null_count < len(errors):
            for i, message in enumerate(errors.to_pylist()):
                if message is not None:
                    if self.on_error == "fail":
                        self.abort()
                        raise InputError(f"row {row + i}: {message} (--on-error skip lists such rows in "
                                         f"_errors-*.jsonl and goes on)")
                    self.errors.append({"row": row + i, "error": message})
        if table.schema != self.writer.schema:  # a kept column typed otherwise by one chunk's inference
            try:
                table = table.cast(self.writer.schema)
            except Exception as e:  # noqa: BLE001 - pyarrow's cast errors vary in type
                raise InputError(f"rows from {row}: the columns' types changed from {self.writer.schema} to "
                                 f"{table.schema}; give the input a fixed schema (Parquet)") from e
        self.writer.write_table(table)
        self.written += table.num_rows

    def _tmp(self, name: str) -> Path:
        return self.shards.folder / (name + ".tmp")

    def _close(self) -> None:
        """The shard whole: its errors, then the shard itself, renamed into place."""
        if self.writer is None:
            return
        self.writer.close()
        self.writer = None
        if self.errors:
            _replace_text(self.shards.folder / errors_name(self.index),
                          "".join(json.dumps(e) + "\n" for e in self.errors))
            self.failed += len(self.errors)
        self.errors = []
        os.replace(self._tmp(shard_name(self.index)), self.shards.folder / shard_name(self.index))
        self.shards.finished.add(self.index)

    def abort(self) -> None:
        """Stop without renaming the shard in progress (Ctrl-C, a crash, a bad row with 'fail')."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None
            self._tmp(shard_name(self.index)).unlink(missing_ok=True)

    def close(self) -> None:
        self._close()


def _replace_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_all(shards: Shards, tables: Iterable, on_error: str = "skip", progress=None) -> ShardWriter:
    """Every (start, table-or-None, rows) of `tables` into `shards`; the writer, for its counts."""
    writer = ShardWriter(shards, on_error, progress)
    try:
        for start, table, rows in tables:
            if table is None:
                writer.skip(start, rows)
            else:
                writer.add(start, table)
    except BaseException:
        writer.abort()
        raise
    writer.close()
    return writer
