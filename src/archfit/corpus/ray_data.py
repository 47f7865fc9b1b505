"""The same job on a Ray cluster through Ray Data: the corpus read by Ray's readers, `map_batches`
with an actor pool (each actor loads the file once, `threads` engine threads each), the answers
streamed back in input order (`preserve_order`) to the driver's shard writer, so the output
folder, its errors file and a resumed run are the same as one process's.

Ray's traps, set here: a local Ray gets one logical CPU beyond the actors', or its read tasks
would wait forever behind actors that hold every CPU; usage reporting is off unless set."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ..errors import InputError
from .rows import RowMapper, table_rows
from .source import Source
from .table import to_table


@dataclass(frozen=True)
class RayOptions:
    address: str | None = None  # None: a local Ray instance; 'auto' after `ray start`
    actors: int = 2
    threads: int = 1  # engine threads per actor (the actor's CPUs)


class MapActor:
    """One actor: loads the file once, answers pyarrow batches."""

    def __init__(self, file: str, column: str | None, keep: tuple[str, ...], threads: int):
        from ..artifact import load
        from ..serve.app import engine_threads

        engine_threads(threads)
        self.mapper, self.keep = RowMapper(load(file), column), list(keep)

    def __call__(self, batch):
        results = self.mapper.run(table_rows(self.mapper, batch))
        return to_table(self.mapper.outputs, results, batch.select(self.keep) if self.keep else None)


def _ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as e:
        raise InputError("archfit map --ray needs Ray Data: pip install 'ray[data]'") from e
    return ray


def map_dataset(file: str | Path, dataset, column: str | None = None, keep: tuple[str, ...] = (), actors: int = 2,
                threads: int = 1, chunk_rows: int = 256):
    """`dataset` (a Ray Dataset) mapped through the compiled file: a Ray Dataset of the answers."""
    if not isinstance(file, (str, Path)):
        raise InputError("archfit.map over a Ray Dataset takes the compiled file's path (each actor loads it), "
                         "not a module: save it with archfit.save first")
    path = Path(file).resolve()
    if not path.is_file():
        raise InputError(f"file {path} does not exist")
    return dataset.map_batches(MapActor, fn_constructor_kwargs={"file": str(path), "column": column,
                                                                "keep": tuple(keep), "threads": threads},
                               batch_size=chunk_rows, batch_format="pyarrow", concurrency=actors, num_cpus=threads)


def read(source: Source, chunk_rows: int):
    """The corpus as a Ray Dataset of blocks of `chunk_rows` rows, re-blocked as it streams: a
    one-file corpus is read as one block, which would feed one actor."""
    ray = _ray()
    paths = [str(f) for f in source.files]
    if source.format == "parquet":
        ds = ray.data.read_parquet(paths)
    elif source.format == "csv":
        ds = ray.data.read_csv(paths)
    elif source.format == "json":
        ds = ray.data.read_json(paths, lines=True, file_extensions=None)
    else:
        raise InputError(f"archfit map --ray reads Parquet, CSV and JSON Lines; {source.files[0].name} is "
                         f"{source.format}: convert it, or run without --ray")
    return ds.repartition(target_num_rows_per_block=chunk_rows)


def tables(source: Source, file: str | Path, options: RayOptions, column: str | None, keep: tuple[str, ...],
           chunk_rows: int) -> Iterator:
    """(start, table, rows) in input order, computed on the cluster."""
    import logging

    ray = _ray()
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # its per-run INFO lines; errors still surface
    if not ray.is_initialized():
        if options.address is None:
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
            ray.init(num_cpus=options.actors * options.threads + 1, include_dashboard=False, log_to_driver=False,
                     _node_ip_address="127.0.0.1")
        else:
            ray.init(address=options.address, log_to_driver=False)
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # rows come back in input order
    context.enable_progress_bars = False  # archfit's own bar counts the rows
    out = map_dataset(file, read(source, chunk_rows), column, keep, options.actors, options.threads, chunk_rows)
    start = 0
    for batch in out.iter_batches(batch_size=chunk_rows, batch_format="pyarrow"):
        yield start, batch, batch.num_rows
        start += batch.num_rows
