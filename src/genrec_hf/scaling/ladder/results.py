"""The ladder's files: an append-only results CSV (one row per size, data fraction and task, with per-user ranks)
and the folders it creates, marked so that an interrupted run is cleared and a user's folder never is."""

from __future__ import annotations

import csv
import datetime
import json
import logging
import math
import os
import shutil
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)
COLD_SLICE = "/cold"  # suffix of a task's cold-slice rows (`evaluation.cold_slice_max_events`)


MARKER = ".genrec_ladder"  # written first into every folder the ladder creates: "ours, may be cleared if unfinished"


BASE_DONE = "ladder_base.json"  # written last into a finished base folder


BASE_COLUMNS = (
    "ladder_id", "dataset", "preset", "backbone_params", "total_params", "item_embedding_size", "data_fraction",
    "train_users", "train_events", "task", "mode", "split", "mrr",
)


TAIL_COLUMNS = (
    "num_users", "validation_mrr", "test_mrr", "pretrain_steps", "pretrain_epochs", "pretrain_seconds",
    "pretrain_stop", "finetune_steps", "finetune_seconds", "seed", "ranks_path", "finished_at",
)


def claim(folder: Path) -> None:
    """Create `folder` as the ladder's (marker first); refuse a non-empty folder that is not the ladder's."""
    if folder.exists():
        if not folder.is_dir():
            raise FileExistsError(f"{folder} exists and is not a folder; the ladder will not replace it.")
        if not (folder / MARKER).is_file() and any(folder.iterdir()):
            raise FileExistsError(f"{folder} is not empty and was not written by the scaling ladder (no {MARKER} "
                                  "marker); the ladder never writes into it. Move it away or choose another "
                                  "output_dir.")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MARKER).write_text(json.dumps({"created": now()}))


def clear_unfinished(folder: Path, what: str) -> None:
    """Remove an interrupted run's folder, which must carry the ladder's marker (a user's folder is refused)."""
    if not folder.exists():
        return
    if not (folder / MARKER).is_file():
        if folder.is_dir() and not any(folder.iterdir()):
            return
        raise FileExistsError(f"{folder} is not empty and was not written by the scaling ladder (no {MARKER} "
                              "marker); the ladder never writes into it. Move it away or choose another output_dir.")
    logger.info("%s in %s was interrupted before it finished: clearing it and starting it again", what, folder)
    shutil.rmtree(folder)


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def csv_columns(ks: list[int]) -> list[str]:
    """The results CSV's columns, in order (metrics at every cut-off of `evaluation.ks`)."""
    metrics = [f"{m}@{k}" for k in ks for m in ("hr", "ndcg", "recall")]
    return [*BASE_COLUMNS, *metrics, *TAIL_COLUMNS]


class ResultsCSV:
    """An append-only results CSV: rows keyed by (preset, data_fraction, task); each row is flushed when written."""

    def __init__(self, path: Path, columns: list[str], ladder_id: str) -> None:
        self.path = path
        self.columns = columns
        self.rows: dict[tuple[str, float, str], dict[str, str]] = {}
        if path.exists():
            if not path.is_file():
                raise IsADirectoryError(f"results_csv {path} is a folder; expected a CSV file path.")
            with path.open(newline="") as handle:
                reader = csv.DictReader(handle)
                header = reader.fieldnames or []
                if header and header != columns:
                    raise ValueError(f"{path} has columns {header}, not the ladder's {columns}; it is another "
                                     "file or another ladder's: choose another results_csv.")
                for row in reader:
                    if row.get("ladder_id") != ladder_id:
                        raise ValueError(f"{path} holds rows of another ladder (ladder_id {row.get('ladder_id')}, "
                                         f"this recipe's is {ladder_id}): the fixed settings differ, so the rows "
                                         "would not be comparable. Choose another results_csv or output_dir.")
                    self.rows[self.key(row)] = row
        else:
            path.parent.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def key(row: dict[str, Any]) -> tuple[str, float, str]:
        return str(row["preset"]), round(float(row["data_fraction"]), 6), str(row["task"])

    def has(self, preset: str, fraction: float, task: str) -> bool:
        return (preset, round(fraction, 6), task) in self.rows

    def append(self, row: dict[str, Any]) -> None:
        new = not self.path.exists() or self.path.stat().st_size == 0
        with self.path.open("a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=self.columns)
            if new:
                writer.writeheader()
            writer.writerow({c: _cell(row.get(c)) for c in self.columns})
            handle.flush()
        self.rows[self.key(row)] = {c: _cell(row.get(c)) for c in self.columns}


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ""
    return str(value)


def relocated(row: dict[str, str], source: Path, target: Path) -> dict[str, str]:
    """A copy of `row` whose ranks_path is relative to `target`'s folder instead of `source`'s."""
    row = dict(row)
    if row.get("ranks_path"):
        absolute = (source.parent / row["ranks_path"]).resolve()
        row["ranks_path"] = relative(absolute, target)
    return row


def relative(path: Path, csv_path: Path) -> str:
    return os.path.relpath(path.resolve(), csv_path.parent.resolve())
