"""Generic CSV / TSV / Parquet event tables with a column mapping.

`column_map` maps canonical names to the file's columns, e.g. `{"user_id": "customer", "item_id": "sku",
"timestamp": "ts", "rating": "stars", "action": "event_type"}`. Without a mapping, common spellings are tried
(`user_id`/`userId`/`user`, `item_id`/`itemId`/`movieId`/`item`, `timestamp`/`time`/`ts`, `rating`/`score`).
Ids are kept exactly as written ('12' and '12.0' are two ids); a float id column (Parquet) must hold integers, a
binary one UTF-8 text; Parquet id columns of other types (bool, list, struct, ...) are refused.
Timestamps may be unix seconds (years 1..9999) or parseable date/times, one kind per column; without a timestamp
column, row order per user is the time.
Actions may be integers >= 0 or strings (mapped to 1..K in sorted order; 0 stays "unknown").
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ._parsing import exact_ids, parse_numbers, parse_timestamps, read_table, require_path
from .events import LoadedEvents

logger = logging.getLogger(__name__)

CANONICAL = ("user_id", "item_id", "timestamp", "rating", "action")
ALIASES = {
    "user_id": ("user_id", "userId", "user", "uid", "UserID"),
    "item_id": ("item_id", "itemId", "item", "iid", "movieId", "MovieID", "product_id"),
    "timestamp": ("timestamp", "time", "ts", "datetime", "Timestamp"),
    "rating": ("rating", "score", "Rating"),
    "action": ("action", "action_id", "event_type"),
}
TABULAR_SUFFIXES = (".csv", ".tsv", ".parquet", ".pq")


def load_table(source: str | Path, column_map: dict[str, str] | None = None) -> LoadedEvents:
    """Events of one CSV/TSV/Parquet file, columns named through `column_map` (see module docstring)."""
    path = Path(source)
    require_path(path, "event table")
    label = str(path)
    unknown = sorted(set(column_map or {}) - set(CANONICAL))
    if unknown:
        raise ValueError(f"column_map keys {unknown} are not canonical names; expected some of {list(CANONICAL)}.")
    if path.suffix in (".parquet", ".pq"):
        try:
            table = pd.read_parquet(path)
        except Exception as error:  # pyarrow raises several types for non-parquet input
            raise ValueError(f"{label}: cannot read as Parquet ({error}).") from None
        if len(table) == 0:
            raise ValueError(f"{label} has columns {list(table.columns)} but no events.")
        first_line, unit = 0, "row"
    else:
        table = read_table(path, label=label, sep="\t" if path.suffix == ".tsv" else ",")
        first_line, unit = 2, "line"
    mapping = _resolve_columns(list(table.columns), column_map, label)
    if unit == "row":
        schema = pq.read_schema(path)
        for key in ("user_id", "item_id"):
            table[mapping[key]] = _parquet_ids(table[mapping[key]], schema.field(mapping[key]).type, label,
                                               mapping[key])
    user, item = (exact_ids(table[mapping[key]], label=label, column=mapping[key], first_line=first_line, unit=unit)
                  for key in ("user_id", "item_id"))
    events = pd.DataFrame({"user_id": user.to_numpy(), "item_id": item.to_numpy()})
    has_timestamps = "timestamp" in mapping
    if has_timestamps:
        events["timestamp"] = parse_timestamps(table[mapping["timestamp"]], label=label,
                                               column=mapping["timestamp"], first_line=first_line, unit=unit)
    else:
        logger.info("%s: no timestamp column; row order per user is used as event order", label)
        events["timestamp"] = events.groupby("user_id").cumcount().to_numpy(np.int64)
    events["rating"] = np.nan
    if "rating" in mapping:
        events["rating"] = parse_numbers(table[mapping["rating"]], label=label, column=mapping["rating"],
                                         first_line=first_line, integer=False, allow_missing=True, unit=unit)
    if "action" in mapping:
        events["action"] = _actions(table[mapping["action"]], label, mapping["action"], first_line, unit)
    return LoadedEvents(events=events, has_timestamps=has_timestamps, name=path.stem)


def _parquet_ids(values: pd.Series, kind: pa.DataType, label: str, column: str) -> pd.Series:
    """A Parquet id column as strings or numbers `exact_ids` reads: integer, float and string columns as they are,
    binary ones decoded as UTF-8 (the row of the first undecodable value named), any other type refused."""
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind) or pa.types.is_fixed_size_binary(kind):
        decoded = []
        for row, value in enumerate(values):
            try:
                decoded.append(value.decode("utf-8") if isinstance(value, bytes) else value)
            except UnicodeDecodeError:
                raise ValueError(f"{label}, row {row}: column {column!r} holds bytes {value[:16]!r} that are not "
                                 "UTF-8 text; expected integer or string ids.") from None
        return pd.Series(decoded, index=values.index, dtype=object)
    if not (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_string(kind)
            or pa.types.is_large_string(kind) or pa.types.is_null(kind)):
        first = values.iloc[0] if len(values) else None
        raise ValueError(f"{label}: column {column!r} has Parquet type {kind} (row 0: {first}); expected integer "
                         "or string ids.")
    return values


def _resolve_columns(columns: list[str], column_map: dict[str, str] | None, label: str) -> dict[str, str]:
    """Canonical name → file column; explicit `column_map` entries must exist, the rest fall back to aliases."""
    column_map = dict(column_map or {})
    missing_mapped = {k: v for k, v in column_map.items() if v not in columns}
    if missing_mapped:
        raise ValueError(f"{label}: column_map names column(s) {sorted(missing_mapped.values())} "
                         f"(for {sorted(missing_mapped)}) that the file lacks; the file has columns {columns}.")
    mapping = dict(column_map)
    for canonical, aliases in ALIASES.items():
        if canonical not in mapping:
            found = next((a for a in aliases if a in columns), None)
            if found is not None:
                mapping[canonical] = found
    missing = [c for c in ("user_id", "item_id") if c not in mapping]
    if missing:
        tried = {c: list(ALIASES[c]) for c in missing}
        raise ValueError(f"{label}: missing required column(s) {missing} (looked for {tried}); the file has columns "
                         f"{columns}. Map yours: `--data.column_map '{{user_id: COL, item_id: COL}}'` on the command line, "
                         "`data.column_map:` in a recipe, or `column_map={'user_id': ..., ...}` in Python.")
    return mapping


def _actions(values: pd.Series, label: str, column: str, first_line: int, unit: str) -> np.ndarray:
    """Integer action ids as they are; string action names → 1..K in sorted order (empty → 0, unknown)."""
    text = values.astype(str).str.strip()
    if pd.api.types.is_numeric_dtype(values) or not pd.to_numeric(text, errors="coerce").isna().any():
        return parse_numbers(values, label=label, column=column, first_line=first_line, integer=True, unit=unit)
    names = sorted(set(text) - {""})
    codes = {name: i + 1 for i, name in enumerate(names)}
    logger.info("%s: action names mapped to ids %s", label, codes)
    return text.map(lambda name: codes.get(name, 0)).to_numpy(np.int64)
