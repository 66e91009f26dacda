"""The Spark engine of `prepare_events` (pip install "genrec-hf[spark]"; Java 17+).

Spark reads the input files in parallel (one task per file, through the same streaming reader as the other
engines, so file order and parsing are the same), shuffles the staged events by shard and runs each `shards.py`
task on one shard per group (`applyInArrow`); shard files are written by the executors straight into the output
folder with the same Parquet writer. The driver only sees the per-shard summaries. On a cluster, run the
`genrec-hf` script itself under spark-submit (docs/scale.md); the output folder must be a path every executor and
the driver can write (a shared or mounted file system).
"""

from __future__ import annotations

import pickle
from typing import Any

import pyarrow as pa

from .engines import ShardTask, all_batches
from .shards import ShardJob
from .sources import EventSource

_RESULT_SCHEMA = "shard long, payload binary"


def spark_type(arrow_type: pa.DataType) -> str:
    return {pa.int64(): "long", pa.string(): "string", pa.float64(): "double"}[arrow_type]


class SparkEngine:
    """Staging, shuffle and shard tasks on Spark (a given session, the active one, or a new local one)."""

    name = "spark"

    def __init__(self, session: Any = None, threads: int | None = None) -> None:
        try:
            import pyspark
            from pyspark.sql import SparkSession
        except ImportError:
            raise ImportError('the spark engine needs PySpark: pip install "genrec-hf[spark]" (and Java 17+).') \
                from None
        if session is None:
            session = SparkSession.getActiveSession()
        if session is None:
            builder = SparkSession.builder.appName("genrec-hf prepare")
            if threads:
                builder = builder.master(f"local[{threads}]")
            session = builder.getOrCreate()
        self.spark = session
        self.version = pyspark.__version__
        self._schema: pa.Schema | None = None
        self._events: Any = None
        self._staged: Any = None

    def stage(self, source: EventSource) -> int:
        from pyspark import StorageLevel

        self._schema = source.schema
        ddl = ", ".join(f"{f.name} {spark_type(f.type)}" for f in source.schema)
        if source.loaded is not None:  # parsed in memory by the driver: ship its batches
            table = pa.Table.from_batches(list(all_batches(source)), schema=source.schema)
            events = self.spark.createDataFrame(table.to_pandas(), schema=ddl)
        else:
            count = len(source.files)
            files = self.spark.range(count, numPartitions=count).withColumnRenamed("id", "file_index")

            def read(batches: Any) -> Any:
                for batch in batches:
                    for index in batch.column("file_index").to_pylist():
                        yield from source.batches(index)

            events = files.mapInArrow(read, ddl)
        self._events = events.persist(StorageLevel.MEMORY_AND_DISK)
        return int(self._events.count())

    def partition(self, num_shards: int) -> None:
        from pyspark import StorageLevel
        from pyspark.sql import functions as F

        staged = self._events.withColumn("shard", F.pmod(F.col("user_hash"), F.lit(num_shards)))
        self._staged = staged.repartition(num_shards, "shard").persist(StorageLevel.MEMORY_AND_DISK)
        self._staged.count()
        self._events.unpersist()

    def map(self, task: ShardTask, job: ShardJob) -> list[Any]:
        schema = self._schema
        assert schema is not None

        def run(table: pa.Table) -> pa.Table:
            shard = int(table.column("shard")[0].as_py())
            events = table.select(schema.names).cast(schema)
            return pa.table({"shard": [shard], "payload": [pickle.dumps(task(events, job, shard))]})

        rows = self._staged.groupBy("shard").applyInArrow(run, _RESULT_SCHEMA).collect()
        results = {int(row["shard"]): pickle.loads(row["payload"]) for row in rows}
        return [results[shard] if shard in results else task(schema.empty_table(), job, shard)
                for shard in range(job.num_shards)]

    def close(self) -> None:
        for frame in (self._events, self._staged):
            if frame is not None:
                frame.unpersist()
