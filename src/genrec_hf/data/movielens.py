"""MovieLens exactly as GroupLens ships it, from the folder or straight from the .zip.

    ml-100k   u.data (user \\t item \\t rating \\t timestamp, no header) + u.item ("|", latin-1) [+ u.genre]
    ml-1m/10m ratings.dat (UserID::MovieID::Rating::Timestamp) + movies.dat (MovieID::Title::Genres, latin-1)
    ml-20m/25m/32m/latest  ratings.csv (userId,movieId,rating,timestamp) + movies.csv (movieId,title,genres)

The rating (1..5, half stars rounded up) is also the action type, so a model can embed "rated 5" apart from "rated 1".
"""

from __future__ import annotations

import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd

from ._parsing import (check_columns, parse_integer_ids, parse_numbers, read_table, require_path,
                       star_actions, unix_seconds)
from .events import LoadedEvents

RATING_FILES = ("u.data", "ratings.dat", "ratings.csv")
GENRES_100K = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
               "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War",
               "Western"]
_TITLE_YEAR = re.compile(r"^(.*?)\s*\((\d{4})\)\s*$")


@dataclass
class _Files:
    """A folder or a zip seen as relative POSIX names + a reader, so both layouts share one code path."""

    root: Path
    names: list[str]
    read: Callable[[str], bytes]

    def label(self, name: str) -> str:
        return f"{self.root}:{name}" if self.root.suffix == ".zip" else str(self.root / name)

    def find(self, basename: str, near: str | None = None) -> str | None:
        """The member called `basename`, preferring the one in the same folder as `near`."""
        matches = [n for n in self.names if PurePosixPath(n).name == basename]
        if near is not None:
            same = [n for n in matches if PurePosixPath(n).parent == PurePosixPath(near).parent]
            matches = same or matches
        return min(matches, key=lambda n: (n.count("/"), n)) if matches else None


def _open(source: Path) -> _Files:
    require_path(source, "MovieLens data")
    if source.is_dir():
        names = [p.relative_to(source).as_posix() for depth in ("*", "*/*") for p in source.glob(depth) if p.is_file()]
        return _Files(source, sorted(names), lambda name: (source / name).read_bytes())
    if zipfile.is_zipfile(source):
        archive = zipfile.ZipFile(source)
        return _Files(source, sorted(n for n in archive.namelist() if not n.endswith("/")), archive.read)
    siblings = sorted(p.name for p in source.parent.iterdir() if p.is_file())
    return _Files(source.parent, siblings, lambda name: (source.parent / name).read_bytes())


def is_movielens(source: Path) -> bool:
    """True when `source` (a ratings file, a folder or a zip) holds one of the GroupLens rating files."""
    try:
        files = _open(source)
    except (FileNotFoundError, zipfile.BadZipFile, OSError):
        return False
    return any(files.find(name) for name in RATING_FILES)


def load_movielens(source: str | Path) -> LoadedEvents:
    """Events + movie metadata (title, year, genres; release timestamp for ml-100k) of a GroupLens MovieLens copy."""
    source = Path(source)
    files = _open(source)
    if source.is_file() and source.name in RATING_FILES:
        ratings_name: str | None = source.name
    else:
        ratings_name = next((found for name in RATING_FILES if (found := files.find(name))), None)
    if ratings_name is None:
        raise FileNotFoundError(f"No MovieLens ratings file ({', '.join(RATING_FILES)}) in {source}; it has "
                                f"{files.names[:20]}.")
    kind = PurePosixPath(ratings_name).name
    label = files.label(ratings_name)
    raw = files.read(ratings_name)
    renamed: dict[str, str] = {}
    if kind == "u.data":
        read_args: dict[str, Any] = {"sep": "\t", "names": ["user", "item", "rating", "ts"]}
        first_line = 1
    elif kind == "ratings.dat":
        read_args = {"sep": "::", "names": ["user", "item", "rating", "ts"], "encoding": "latin-1", "quoting": False}
        first_line = 1
    else:
        read_args, first_line = {"sep": ","}, 2
        renamed = {"userId": "user", "movieId": "item", "timestamp": "ts"}
    table = read_table(raw, label=label, as_strings=False, **read_args)
    if renamed:
        check_columns(table.columns, ["userId", "movieId", "rating", "timestamp"], label=label)
        table = table.rename(columns=renamed)

    text_table: pd.DataFrame | None = None

    def ids(column: str, name: str) -> np.ndarray:
        nonlocal text_table
        values = table[column]
        if values.dtype.kind != "i":  # a float or text column: judge the ids as they are written
            if text_table is None:
                text_table = read_table(raw, label=label, **read_args).rename(columns=renamed)
            values = text_table[column]
        return parse_integer_ids(values, label=label, column=name, first_line=first_line)

    users, items = ids("user", "user id"), ids("item", "item id")
    ratings = parse_numbers(table["rating"], label=label, column="rating", first_line=first_line, integer=False)
    times = parse_numbers(table["ts"], label=label, column="timestamp", first_line=first_line, integer=True)
    timestamps = unix_seconds(times.astype(np.float64), table["ts"], label=label, column="timestamp",
                              first_line=first_line)
    events = pd.DataFrame({"user_id": users, "item_id": items, "timestamp": timestamps, "rating": ratings})
    actions = star_actions(ratings)
    if actions is not None:
        events["action"] = actions
    name = PurePosixPath(ratings_name).parent.name or (source.stem if source.is_file() else source.name)
    return LoadedEvents(events=events, item_info=_movie_info(files, kind, ratings_name), has_timestamps=True,
                        name=name)


def _movie_info(files: _Files, kind: str, ratings_name: str) -> dict[str, dict[str, Any]]:
    """Title / year / genres per movie id, from whichever movie file sits next to the ratings (absent → {})."""
    movies_name = files.find({"u.data": "u.item", "ratings.dat": "movies.dat", "ratings.csv": "movies.csv"}[kind],
                             near=ratings_name)
    if movies_name is None:
        return {}
    label = files.label(movies_name)
    raw = files.read(movies_name)
    info: dict[str, dict[str, Any]] = {}
    if kind == "u.data":
        genres = _genres_100k(files, ratings_name)
        table = _headerless(raw, label, "|")
        for row in table.itertuples(index=False):
            flags = [str(v).strip() for v in row[5:5 + len(genres)]]
            entry = _title_entry(str(row[1]))
            entry["genres"] = [g for g, flag in zip(genres, flags) if flag == "1"]
            released = pd.to_datetime(str(row[2]).strip(), format="%d-%b-%Y", errors="coerce")
            if not pd.isna(released):
                entry["release_timestamp"] = int(released.timestamp())
                entry.setdefault("year", int(released.year))
            info[str(row[0]).strip()] = entry
        return info
    if kind == "ratings.dat":
        table = read_table(raw, label=label, sep="::", names=["item", "title", "genres"], encoding="latin-1",
                           quoting=False)
    else:
        table = read_table(raw, label=label, sep=",")
        check_columns(table.columns, ["movieId", "title", "genres"], label=label)
        table = table.rename(columns={"movieId": "item"})
    for item, title, genres in zip(table["item"], table["title"], table["genres"]):
        entry = _title_entry(str(title))
        entry["genres"] = [g for g in str(genres).split("|") if g and g != "(no genres listed)"]
        info[str(item).strip()] = entry
    return info


def _headerless(raw: bytes, label: str, sep: str) -> pd.DataFrame:
    """A headerless latin-1 table whose rows may have different field counts (u.item)."""
    rows = [line.split(sep) for line in raw.decode("latin-1").splitlines() if line.strip()]
    if not rows:
        raise ValueError(f"{label} is empty; expected one movie per line.")
    return pd.DataFrame(rows)


def _genres_100k(files: _Files, ratings_name: str) -> list[str]:
    name = files.find("u.genre", near=ratings_name)
    if name is None:
        return GENRES_100K
    lines = [line.rsplit("|", 1) for line in files.read(name).decode("latin-1").splitlines() if "|" in line]
    by_index = {int(index): genre for genre, index in lines if index.strip().isdigit()}
    return [by_index[i] for i in sorted(by_index)] or GENRES_100K


def _title_entry(title: str) -> dict[str, Any]:
    """"Toy Story (1995)" → {"title": "Toy Story", "year": 1995}."""
    title = title.strip()
    match = _TITLE_YEAR.match(title)
    if match:
        return {"title": match.group(1), "year": int(match.group(2))}
    return {"title": title}
