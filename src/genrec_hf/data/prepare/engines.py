"""Engines move staged events into shards; `shards.py` does the rest, so every engine gives the same bytes.

    memory   the staged log in one Arrow table; shards are slices of it (logs that fit in RAM: the fastest)
    duckdb   the staged log in a DuckDB database file, cut into per-shard Parquet files by DuckDB's partitioned
             COPY, which spills to disk under `memory_limit`: peak memory follows the shard size, not the log
    spark    the same on a Spark cluster (`spark.py`, optional extra)

An engine implements `stage` (read the source once, return the event count), `partition` (assign every event to
`user_hash % num_shards`) and `map` (run a `shards.py` task on each shard's events; results in shard order, as an
iterator so the driver folds them as they come).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .shards import ShardJob
from .sources import EventSource

logger = logging.getLogger(__name__)
ShardTask = Callable[[pa.Table, ShardJob, int], Any]  # (shard events, job, shard number) -> result


def all_batches(source: EventSource) -> Iterator[pa.RecordBatch]:
    """Every staged batch of the source, file after file."""
    for index in range(max(len(source.files), 1)):
        yield from source.batches(index)


class MemoryEngine:
    """The staged log as one in-memory Arrow table (about 50 bytes per event plus the ids' text)."""

    name = "memory"
    keeps_rows = True  # shard tasks may keep each shard's ordered rows between passes (see `order_rows`)

    def __init__(self, threads: int | None = None) -> None:
        if threads:
            pa.set_cpu_count(threads)
        self._table: pa.Table | None = None
        self._bounds = np.zeros(1, dtype=np.int64)

    def stage(self, source: EventSource) -> int:
        self._table = pa.Table.from_batches(list(all_batches(source)), schema=source.schema)
        return self._table.num_rows

    def partition(self, num_shards: int) -> None:
        assert self._table is not None
        shard = self._table["user_hash"].to_numpy() % num_shards
        order = pa.array(np.argsort(shard, kind="stable"))
        self._bounds = np.concatenate([[0], np.cumsum(np.bincount(shard, minlength=num_shards))])
        schema = self._table.schema.remove(self._table.schema.get_field_index("user_hash"))
        columns = {name: self._table[name] for name in schema.names}
        self._table = None
        for name in schema.names:  # one gather per column, each source column freed as it goes: no second log
            columns[name] = columns[name].take(order)
        self._table = pa.table(columns, schema=schema)  # shard-sorted: every shard is a zero-copy slice

    def map(self, task: ShardTask, job: ShardJob) -> Iterator[Any]:
        assert self._table is not None
        for shard in range(job.num_shards):
            yield task(self._table.slice(self._bounds[shard], self._bounds[shard + 1] - self._bounds[shard]), job,
                       shard)

    def close(self) -> None:
        self._table = None


class DuckDBEngine:
    """Out-of-core staging and shuffling through DuckDB (pip install "genrec-hf[prepare]")."""

    name = "duckdb"

    def __init__(self, threads: int | None = None, memory_limit: str | None = None,
                 temp_dir: str | Path | None = None) -> None:
        try:
            import duckdb
        except ImportError:
            raise ImportError('the duckdb engine needs DuckDB: pip install "genrec-hf[prepare]" (or use '
                              "engine='memory' for a log that fits in memory).") from None
        self._dir = Path(tempfile.mkdtemp(prefix="genrec-prepare-", dir=temp_dir))
        self._con = duckdb.connect(str(self._dir / "events.duckdb"))
        settings = {"temp_directory": str(self._dir / "spill"), "preserve_insertion_order": False,
                    "partitioned_write_flush_threshold": 1 << 16}
        if threads:
            settings["threads"] = threads
        if memory_limit:
            settings["memory_limit"] = memory_limit
        for key, value in settings.items():
            self._con.execute(f"SET {key} = ?", [value]) if not isinstance(value, bool) else \
                self._con.execute(f"SET {key} = {str(value).lower()}")
        self._schema: pa.Schema | None = None
        self._num_shards = 0
        self.version = duckdb.__version__

    def stage(self, source: EventSource) -> int:
        self._schema = source.schema
        reader = pa.RecordBatchReader.from_batches(source.schema, all_batches(source))  # noqa: F841 (DuckDB scans it)
        self._con.execute("CREATE TABLE events AS SELECT * FROM reader")
        return int(self._con.execute("SELECT count(*) FROM events").fetchone()[0])

    def partition(self, num_shards: int) -> None:
        self._num_shards = num_shards
        target = self._dir / "shards"
        self._con.execute(f"COPY (SELECT *, user_hash % {int(num_shards)} AS shard FROM events) TO '{target}' "
                          "(FORMAT parquet, PARTITION_BY (shard), COMPRESSION snappy)")
        self._con.execute("DROP TABLE events")
        self._con.execute("CHECKPOINT")

    def _shard(self, shard: int) -> pa.Table:
        assert self._schema is not None
        files = sorted((self._dir / "shards" / f"shard={shard}").glob("*.parquet"))
        if not files:
            return self._schema.empty_table()
        table = pq.read_table(files, partitioning=None)
        return table.select(self._schema.names).cast(self._schema)

    def map(self, task: ShardTask, job: ShardJob) -> Iterator[Any]:
        for shard in range(job.num_shards):
            yield task(self._shard(shard), job, shard)

    def close(self) -> None:
        self._con.close()
        shutil.rmtree(self._dir, ignore_errors=True)
