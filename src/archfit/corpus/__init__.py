"""Offline inference over a corpus: a compiled file over rows on disk (Parquet, CSV, JSON Lines,
arrays) into resumable Parquet shards, in one process or on Ray Data (`archfit map`), and
`archfit.map` over rows in Python."""
from .job import MapSummary, map, map_file
from .ray_data import RayOptions
from .rows import RowError, RowMapper

__all__ = ["MapSummary", "RayOptions", "RowError", "RowMapper", "map", "map_file"]
