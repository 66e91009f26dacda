"""The Spark engine (local mode) writes the same bytes as the single-machine engine: shards, vocabulary,
manifest and cold-item list (only `prepare_run.json`, the engine's own record, differs).

One local Spark session for the module (JVM start-up is most of the ~30 s this file takes).
"""

from __future__ import annotations

import importlib.util
import shutil

import numpy as np
import pytest

from genrec_hf.data.prepare import prepare_events

from tests.data.test_prepare import messy_events, same_folders

pytestmark = [
    pytest.mark.filterwarnings("ignore::FutureWarning"),  # pyspark on pandas 3
    pytest.mark.skipif(importlib.util.find_spec("pyspark") is None or shutil.which("java") is None,
                       reason="the Spark engine needs pyspark and Java (pip install \"genrec-hf[spark]\")"),
]


@pytest.fixture(scope="module")
def spark():
    from pyspark.sql import SparkSession

    session = (SparkSession.builder.master("local[1]").appName("genrec-hf prepare test")
               .config("spark.ui.enabled", "false").config("spark.sql.shuffle.partitions", "4").getOrCreate())
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


def test_spark_writes_the_same_folder(tmp_path, spark):
    events = messy_events(2)
    rng = np.random.default_rng(0)
    events["event_type"] = rng.choice(["view", "cart", "buy", ""], len(events))  # names numbered over the log
    folder = tmp_path / "logs"
    folder.mkdir()
    for i, part in enumerate(np.array_split(np.arange(len(events)), 3)):  # one Spark task per file
        events.iloc[part].to_csv(folder / f"part-{i}.csv", index=False)
    options = dict(num_shards=5, k_core=2, min_user_events=3, split={"kind": "time", "quantile": 0.8})
    prepare_events(folder, tmp_path / "single", engine="memory", **options)
    prepare_events(folder, tmp_path / "spark", engine="spark", spark_session=spark, **options)
    assert same_folders(tmp_path / "single", tmp_path / "spark") == []


def test_spark_stages_in_memory_formats(tmp_path, spark):
    options = dict(num_shards=2, split={"kind": "cold_items", "fraction": 0.2, "seed": 1})
    prepare_events("synthetic:num_users=80,seed=5", tmp_path / "single", engine="memory", **options)
    prepare_events("synthetic:num_users=80,seed=5", tmp_path / "spark", engine="spark", spark_session=spark, **options)
    assert same_folders(tmp_path / "single", tmp_path / "spark") == []
