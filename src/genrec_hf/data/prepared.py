"""The prepared folder: what `genrec-hf prepare` writes and training / predict read.

    DIR/manifest.json                  written last: schema version, counts, vocab hash, split, filters, shards
    DIR/item_vocab.json                `ItemVocab.save` format (raw id ↔ index, item metadata)
    DIR/shard-00000-of-00004.parquet   one row per user: user_id, item_ids, timestamps, action_ids, ratings
    DIR/cold_items.json                only for a cold-item split: the held-out raw item ids
    DIR/prepare_run.json               engine, versions, time taken (not hashed; differs between engines)

A user's shard is `user_shard(user_id, num_shards)` (63-bit FNV-1a of the id's UTF-8 text, mod the shard count); rows
of a shard are in `sort_raw_ids` order of user ids (numeric when every user id of the log is an integer), events
oldest first, ties in time in file order. List columns are `large_list` (64-bit offsets). Every shard carries the
schema version and the vocabulary's sha256 in its Parquet metadata, and the manifest records its rows, events,
bytes and sha256, so a shard from another run, another vocabulary or another schema version is refused on read.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from datasets import Dataset, DatasetInfo
from datasets.table import InMemoryTable

from .interactions import SEQUENCE_FEATURES, InteractionData
from .vocab import VOCAB_FILE, ItemVocab, sort_raw_ids

MANIFEST_FILE = "manifest.json"
RUN_FILE = "prepare_run.json"
COLD_ITEMS_FILE = "cold_items.json"
INCOMPLETE_MARKER = "_PREPARE_INCOMPLETE"  # present while a prepare job writes the folder
FORMAT = "genrec_hf.prepared"
SCHEMA_VERSION = 1
METADATA_KEY = b"genrec_hf.prepared"
SHARD_SCHEMA = pa.schema([
    ("user_id", pa.string()),
    ("item_ids", pa.large_list(pa.int64())),  # vocab indices 1..V-1, oldest first
    ("timestamps", pa.large_list(pa.int64())),  # unix seconds, or 0,1,2,... event order without timestamps
    ("action_ids", pa.large_list(pa.int64())),  # 0 = unknown
    ("ratings", pa.large_list(pa.float32())),  # 0.0 where absent
])


class PreparedFolderError(ValueError):
    """A prepared folder is incomplete, or a shard or the vocabulary does not match its manifest."""


def shard_name(shard: int, num_shards: int) -> str:
    return f"shard-{shard:05d}-of-{num_shards:05d}.parquet"


def bytes_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def is_prepared_folder(path: str | Path) -> bool:
    """True for a folder written by `genrec-hf prepare` (complete or not: reading an incomplete one is an error)."""
    path = Path(path)
    return path.is_dir() and ((path / MANIFEST_FILE).is_file() or (path / INCOMPLETE_MARKER).is_file())


@dataclass
class PreparedData:
    """An opened prepared folder: manifest, vocabulary and shard access (see the module docstring)."""

    path: Path
    manifest: dict[str, Any]
    vocab: ItemVocab

    @property
    def num_shards(self) -> int:
        return len(self.manifest["shards"])

    @property
    def split(self) -> dict[str, Any]:
        """The split decided at prepare time: {"kind": "leave_one_out"} / {"kind": "time", "cut": ...} /
        {"kind": "cold_items", "fraction", "seed", "num_cold", ...} (cold ids: `cold_items()`)."""
        return self.manifest["split"]

    def shard_paths(self) -> list[Path]:
        return [self.path / entry["file"] for entry in self.manifest["shards"]]

    def cold_items(self) -> list[str]:
        """Raw ids held out by a cold-item split (checked against the manifest's sha256)."""
        split = self.split
        if split["kind"] != "cold_items":
            raise ValueError(f"{self.path} was prepared with a {split['kind']} split, which holds out no items.")
        data = _read_checked(self.path / COLD_ITEMS_FILE, split["cold_items_sha256"], "cold items")
        return json.loads(data)["items"]

    def read_shard(self, index: int, verify: bool = True) -> pa.Table:
        """Shard `index` as an Arrow table of `SHARD_SCHEMA`; `verify` checks its bytes against the manifest."""
        entry = self.manifest["shards"][index]
        path = self.path / entry["file"]
        data = _read_checked(path, entry["sha256"] if verify else None, f"shard {index}")
        try:
            table = pq.read_table(pa.BufferReader(data))
        except (pa.ArrowInvalid, OSError) as error:
            raise PreparedFolderError(f"{path}: not a readable Parquet shard ({error}); prepare the folder "
                                      "again.") from None
        check_shard_table(table, path, self.manifest)
        if table.num_rows != entry["num_users"]:
            raise PreparedFolderError(f"{path}: {table.num_rows} users, the manifest says {entry['num_users']}.")
        return table

    def check_footers(self, indices: list[int] | None = None) -> None:
        """Each shard's size against the manifest and its Parquet schema and metadata (schema version, vocabulary
        hash), reading only the footers: what a stream checks before reading shards it will not hash."""
        for index in range(self.num_shards) if indices is None else indices:
            entry = self.manifest["shards"][index]
            path = self.path / entry["file"]
            if path.stat().st_size != entry["bytes"]:
                raise PreparedFolderError(f"{path}: {path.stat().st_size} bytes, the manifest says {entry['bytes']} "
                                          "(truncated or replaced); prepare the folder again.")
            try:
                schema = pq.read_schema(path)
            except (pa.ArrowInvalid, OSError) as error:
                raise PreparedFolderError(f"{path}: not a readable Parquet shard ({error}); prepare the folder "
                                          "again.") from None
            check_shard_table(schema.empty_table(), path, self.manifest)

    def verify(self) -> None:
        """Check every shard's bytes, schema and metadata (`read_shard` does it shard by shard)."""
        for index in range(self.num_shards):
            self.read_shard(index)

    def to_interactions(self, verify: bool = True) -> InteractionData:
        """The whole folder in memory as the `InteractionData` `load_interactions` builds from the raw log."""
        tables = [self.read_shard(i, verify) for i in range(self.num_shards)]
        table = pa.concat_tables(tables) if tables else SHARD_SCHEMA.empty_table()
        users = table["user_id"].to_pylist()
        order = {raw: i for i, raw in enumerate(sort_raw_ids(users, self.manifest["user_ids_numeric"]))}
        table = table.take(np.argsort(np.fromiter((order[u] for u in users), np.int64, len(users)), kind="stable"))
        table = table.rename_columns(list(SEQUENCE_FEATURES)).cast(SEQUENCE_FEATURES.arrow_schema)
        sequences = Dataset(InMemoryTable(table), info=DatasetInfo(features=SEQUENCE_FEATURES))
        return InteractionData(sequences=sequences, vocab=self.vocab, item_info=self.vocab.item_info,
                               has_timestamps=self.manifest["has_timestamps"],
                               num_action_types=self.manifest["num_action_types"], name=self.manifest["name"])


def open_prepared(path: str | Path) -> PreparedData:
    """Open a prepared folder: the manifest (format, schema version), the vocabulary (sha256) and the shard list
    (missing or extra shard files) are checked here; shard bytes when they are read."""
    path = Path(path)
    manifest_path = path / MANIFEST_FILE
    if (path / INCOMPLETE_MARKER).exists() or not manifest_path.is_file():
        raise PreparedFolderError(f"{path} is an incomplete prepared folder (no {MANIFEST_FILE}: the prepare job was "
                                  "interrupted or is still running); run `genrec-hf prepare` again.")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise PreparedFolderError(f"{manifest_path}: not valid JSON ({error}).") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise PreparedFolderError(f"{manifest_path}: not a genrec_hf prepared-folder manifest (format "
                                  f"{manifest.get('format') if isinstance(manifest, dict) else None!r}, expected "
                                  f"{FORMAT!r}).")
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise PreparedFolderError(f"{manifest_path}: schema version {manifest.get('schema_version')!r}; this "
                                  f"genrec_hf reads version {SCHEMA_VERSION}. Prepare the log again.")
    _read_checked(path / VOCAB_FILE, manifest["vocab"]["sha256"], "item vocabulary")
    vocab = ItemVocab.load(path)
    listed = {entry["file"] for entry in manifest["shards"]}
    for entry in manifest["shards"]:
        if not (path / entry["file"]).is_file():
            raise PreparedFolderError(f"{path / entry['file']}: missing shard; the manifest lists "
                                      f"{len(listed)} shards. Prepare the folder again.")
    extra = sorted(p.name for p in path.glob("shard-*.parquet") if p.name not in listed)
    if extra:
        raise PreparedFolderError(f"{path / extra[0]}: extra shard not in {MANIFEST_FILE} (from another prepare "
                                  f"run?); expected only the {len(listed)} listed shards.")
    return PreparedData(path=path, manifest=manifest, vocab=vocab)


def check_shard_table(table: pa.Table, path: Path | str, manifest: dict[str, Any]) -> None:
    """Schema, schema version and vocabulary hash of one shard against its folder's manifest."""
    if table.schema.remove_metadata() != SHARD_SCHEMA:
        raise PreparedFolderError(f"{path}: shard columns {table.schema.remove_metadata().to_string()!r} differ "
                                  f"from the prepared schema {SHARD_SCHEMA.to_string()!r}.")
    raw = (table.schema.metadata or {}).get(METADATA_KEY)
    meta = json.loads(raw) if raw else {}
    if meta.get("schema_version") != SCHEMA_VERSION:
        raise PreparedFolderError(f"{path}: shard of schema version {meta.get('schema_version')!r}; expected "
                                  f"{SCHEMA_VERSION}.")
    if meta.get("vocab_sha256") != manifest["vocab"]["sha256"]:
        raise PreparedFolderError(f"{path}: shard written with another item vocabulary (sha256 "
                                  f"{str(meta.get('vocab_sha256'))[:12]}…, the folder's is "
                                  f"{manifest['vocab']['sha256'][:12]}…); its item indices would be wrong.")


def check_filters(manifest: dict[str, Any], path: Path | str, *, min_user_events: int, k_core: int | None,
                  dedup: bool) -> None:
    """Refuse filter settings a prepared folder cannot honour: they are decided at prepare time. Settings that
    change nothing on the prepared events (a lower minimum, a smaller k) are accepted."""
    done = manifest["filters"]
    prepared_k = done["k_core"] or 0
    floor = max(done["min_user_events"], prepared_k)
    problems = []
    if dedup != done["dedup"]:
        problems.append(f"dedup={dedup} (prepared with dedup={done['dedup']})")
    if (k_core or 0) > prepared_k and (k_core or 0) > 1:
        problems.append(f"k_core={k_core} (prepared with k_core={done['k_core']})")
    if min_user_events > floor:
        problems.append(f"min_user_events={min_user_events} (prepared users have >= {floor} events)")
    if problems:
        raise ValueError(f"{path} is a prepared folder whose filters were decided by `genrec-hf prepare`; "
                         f"{'; '.join(problems)} would change it. Prepare the log again with these settings "
                         "or match the folder's.")


def interactions_from_prepared(path: str | Path, *, min_user_events: int = 2, k_core: int | None = None,
                               dedup: bool = True) -> InteractionData:
    """`load_interactions` of a prepared folder: checked, then read whole into memory."""
    prepared = open_prepared(path)
    check_filters(prepared.manifest, path, min_user_events=min_user_events, k_core=k_core, dedup=dedup)
    return prepared.to_interactions()


def _read_checked(path: Path, sha256: str | None, what: str) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise PreparedFolderError(f"{path}: missing {what} of the prepared folder.") from None
    if sha256 is not None and bytes_sha256(data) != sha256:
        raise PreparedFolderError(f"{path}: {what} does not match {MANIFEST_FILE} (sha256 {bytes_sha256(data)[:12]}…, "
                                  f"expected {sha256[:12]}…): corrupted or replaced; prepare the folder again.")
    return data
