"""RecBole atomic files: tab-separated `.inter` (+ optional `.item`) with typed headers such as
`user_id:token  item_id:token  rating:float  timestamp:float`.

Ids are `token`s (any string); `float` fields must parse as numbers. A star rating (0.5..10) doubles as the action
type, as in the MovieLens loader. `.user` files carry no per-event signal and are not read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ._parsing import check_columns, parse_numbers, read_table, require_path, star_actions, unix_seconds
from .events import LoadedEvents

_TITLE_FIELDS = ("movie_title", "title", "name", "item_name")
_GENRE_FIELDS = ("class", "genre", "genres", "categories", "category")
_YEAR_FIELDS = ("release_year", "year")


def find_inter_file(source: Path) -> Path:
    """`source` if it is a `.inter` file, else `<folder>/<folder name>.inter` or the folder's only `.inter` file."""
    require_path(source, "RecBole data")
    if source.is_file():
        return source
    preferred = source / f"{source.name}.inter"
    if preferred.is_file():
        return preferred
    candidates = sorted(source.glob("*.inter"))
    if len(candidates) != 1:
        found = [p.name for p in candidates] or sorted(p.name for p in source.iterdir())
        raise FileNotFoundError(f"Expected one RecBole .inter file in {source}; found {found}.")
    return candidates[0]


def _typed_header(frame: pd.DataFrame, label: str) -> dict[str, str]:
    """Column 'name:type' → {name: type}; columns are renamed to the bare names in place."""
    types: dict[str, str] = {}
    for column in frame.columns:
        name, sep, kind = str(column).partition(":")
        if not sep:
            raise ValueError(f"{label}, line 1: header field {column!r} has no type; RecBole atomic headers look "
                             "like 'user_id:token item_id:token rating:float timestamp:float'.")
        types[name] = kind
    frame.columns = list(types)
    return types


def load_recbole(source: str | Path) -> LoadedEvents:
    """Events of a RecBole `.inter` file + item metadata from the `.item` file next to it (title, year, genres...)."""
    inter = find_inter_file(Path(source))
    label = str(inter)
    table = read_table(inter, label=label, sep="\t", quoting=False)
    types = _typed_header(table, label)
    check_columns(types, ["user_id", "item_id"], label=label,
                  hint="(RecBole names: user_id:token, item_id:token, rating:float, timestamp:float)")
    events = pd.DataFrame({"user_id": table["user_id"].str.strip(), "item_id": table["item_id"].str.strip()})
    for column, name in (("user_id", "user id"), ("item_id", "item id")):
        empty = (events[column] == "").to_numpy()
        if empty.any():
            raise ValueError(f"{label}, line {2 + int(np.flatnonzero(empty)[0])}: column {column!r} is empty; "
                             f"expected a {name}.")
    has_timestamps = "timestamp" in table.columns
    if has_timestamps:
        seconds = parse_numbers(table["timestamp"], label=label, column="timestamp", first_line=2, integer=False)
        events["timestamp"] = unix_seconds(seconds, table["timestamp"], label=label, column="timestamp", first_line=2)
    else:  # event order in the file stands in for time
        events["timestamp"] = events.groupby("user_id").cumcount().to_numpy(np.int64)
    if "rating" in table.columns:
        events["rating"] = parse_numbers(table["rating"], label=label, column="rating", first_line=2, integer=False)
        actions = star_actions(events["rating"].to_numpy())
        if actions is not None:
            events["action"] = actions
    else:
        events["rating"] = np.nan
    item_file = inter.with_suffix(".item")
    info = _item_info(item_file) if item_file.is_file() else {}
    return LoadedEvents(events=events, item_info=info, has_timestamps=has_timestamps, name=inter.stem)


def _item_info(path: Path) -> dict[str, dict[str, Any]]:
    label = str(path)
    table = read_table(path, label=label, sep="\t", quoting=False)
    types = _typed_header(table, label)
    check_columns(types, ["item_id"], label=label)
    info: dict[str, dict[str, Any]] = {}
    first_line: dict[str, int] = {}
    columns = [c for c in table.columns if c != "item_id"]
    for line, row in enumerate(table.itertuples(index=False), 2):
        values = dict(zip(table.columns, row))
        raw = str(values["item_id"]).strip()
        if raw in first_line:
            raise ValueError(f"{label}, line {line}: item_id {raw!r} is listed again (first on line "
                             f"{first_line[raw]}); an item has one row of metadata.")
        first_line[raw] = line
        entry: dict[str, Any] = {}
        for column in columns:
            value = _typed_value(str(values[column]).strip(), types[column])
            if value in ("", None, []):
                continue
            if column in _TITLE_FIELDS:
                entry["title"] = " ".join(value) if isinstance(value, list) else str(value)
            elif column in _GENRE_FIELDS:
                entry["genres"] = value if isinstance(value, list) else [value]
            elif column in _YEAR_FIELDS:
                try:
                    entry["year"] = int(float(value))
                except (TypeError, ValueError):
                    continue
            else:
                entry[column] = value
        info[raw] = entry
    return info


def _typed_value(text: str, kind: str) -> Any:
    """One RecBole field as Python: token → str, token_seq → list[str], float → float, float_seq → list[float]."""
    if text == "":
        return None
    try:
        if kind == "float":
            return float(text)
        if kind == "float_seq":
            return [float(v) for v in text.split()]
    except ValueError:
        return text
    return text.split() if kind == "token_seq" else text
