"""`load_interactions`: one entry point for every source; picks the loader, then the shared builder."""

from __future__ import annotations

import inspect
import zipfile
from pathlib import Path

from ._parsing import require_path
from .events import LoadedEvents
from .interactions import InteractionData, build_interactions
from .movielens import is_movielens, load_movielens
from .prepared import interactions_from_prepared, is_prepared_folder
from .recbole import load_recbole
from .sequence_text import load_sequence_text
from .synthetic import synthetic_events
from .tabular import TABULAR_SUFFIXES, load_table

FORMATS = ("synthetic", "recbole", "movielens", "sequence_text", "csv", "parquet")
_FORMAT_ALIASES = {"atomic": "recbole", "txt": "sequence_text", "s3rec": "sequence_text", "tsv": "csv",
                   "table": "csv", "ml": "movielens"}


def load_interactions(
    source: str | Path,
    format: str | None = None,
    *,
    column_map: dict[str, str] | None = None,
    min_user_events: int = 2,
    k_core: int | None = None,
    dedup: bool = True,
) -> InteractionData:
    """Load an interaction log into canonical `InteractionData`.

    Args:
        source: a path (file, folder or GroupLens .zip), a prepared folder (`genrec-hf prepare`: read back as
            prepared, its shards checked; filters that would change it are an error) or `"synthetic"` /
            `"synthetic:num_users=500,seed=1"` (keyword arguments of `generate_synthetic`).
        format: one of `FORMATS`; None = detect from the file names: `*.inter` → recbole; `u.data`, `ratings.dat`,
            GroupLens `ratings.csv` or a MovieLens zip → movielens; `*.txt` → sequence_text; `*.csv`/`*.tsv` →
            csv; `*.parquet` → parquet. A `column_map` always means a generic csv/parquet table.
        column_map: canonical name → column name, for csv/parquet (see `genrec_hf.data.tabular`).
        min_user_events: users with fewer events are dropped (counted in the log).
        k_core: optional iterative k-core filter on users and items.
        dedup: drop repeated (user, item, timestamp) events.
    """
    if format is None and column_map is None and is_prepared_folder(Path(str(source)).expanduser()):
        return interactions_from_prepared(Path(str(source)).expanduser(), min_user_events=min_user_events,
                                          k_core=k_core, dedup=dedup)
    loaded = read_events(source, format, column_map=column_map)
    return build_interactions(loaded.events, item_info=loaded.item_info, name=loaded.name,
                              has_timestamps=loaded.has_timestamps, min_user_events=min_user_events, k_core=k_core,
                              dedup=dedup)


def read_events(source: str | Path, format: str | None = None, *,
                column_map: dict[str, str] | None = None) -> LoadedEvents:
    """The loader step of `load_interactions` alone: raw events + item metadata, before any filtering."""
    text = str(source)
    if format is None and (text == "synthetic" or text.startswith("synthetic:")):
        format = "synthetic"
    fmt = _normalise_format(format) if format is not None else None
    if fmt == "synthetic":
        return synthetic_events(**_synthetic_kwargs(text))
    path = require_path(Path(source).expanduser(), "Interaction data")
    fmt = fmt or detect_format(path, column_map)
    if column_map is not None and fmt not in ("csv", "parquet"):
        raise ValueError(f"column_map only applies to csv/parquet tables, not to format {fmt!r} ({path}).")
    if fmt == "recbole":
        return load_recbole(path)
    if fmt == "movielens":
        return load_movielens(path)
    if fmt == "sequence_text":
        return load_sequence_text(path)
    if path.is_dir():
        path = _single_file(path, TABULAR_SUFFIXES, fmt)
    return load_table(path, column_map)


def detect_format(path: Path, column_map: dict[str, str] | None = None) -> str:
    """Format name of a path from its file names (see `load_interactions`); ValueError when nothing fits."""
    suffix = path.suffix.lower()
    if path.is_file():
        if column_map is not None and suffix in TABULAR_SUFFIXES:
            return "parquet" if suffix in (".parquet", ".pq") else "csv"
        if suffix == ".inter":
            return "recbole"
        if path.name in ("u.data", "ratings.dat") or (suffix == ".zip" and is_movielens(path)):
            return "movielens"
        if path.name == "ratings.csv" and _has_header(path, ("userId", "movieId")):
            return "movielens"
        if suffix == ".txt":
            return "sequence_text"
        if suffix in (".csv", ".tsv"):
            return "csv"
        if suffix in (".parquet", ".pq"):
            return "parquet"
        if suffix == ".zip" and zipfile.is_zipfile(path):
            raise ValueError(f"{path}: the zip holds no MovieLens ratings file (u.data, ratings.dat, ratings.csv); "
                             "unpack it and point to the event file.")
        raise ValueError(f"Cannot tell the format of {path} from its name; pass format= one of {list(FORMATS)}.")
    names = sorted(p.name for p in path.iterdir())
    if any(name.endswith(".inter") for name in names):
        return "recbole"
    if column_map is None and is_movielens(path):
        return "movielens"
    txt = [n for n in names if n.endswith(".txt") and not n.startswith("README")]
    tables = [n for n in names if n.lower().endswith(TABULAR_SUFFIXES)]
    if len(tables) == 1 and not txt:
        return "parquet" if tables[0].lower().endswith((".parquet", ".pq")) else "csv"
    if len(txt) == 1 and not tables:
        return "sequence_text"
    raise ValueError(f"Cannot tell the format of folder {path} (files: {names[:20]}); expected a RecBole .inter "
                     f"file, a MovieLens layout, one .txt sequence file or one csv/parquet table, or pass format= "
                     f"one of {list(FORMATS)}.")


def _normalise_format(format: str) -> str:
    name = _FORMAT_ALIASES.get(format.lower(), format.lower())
    if name not in FORMATS:
        raise ValueError(f"Unknown format {format!r}; expected one of {list(FORMATS)} (or None to detect it).")
    return name


def _synthetic_kwargs(text: str) -> dict[str, int | float]:
    """'synthetic:num_users=500,seed=1' → {"num_users": 500, "seed": 1}, checked against the generator's arguments."""
    _, _, spec = text.partition(":")
    allowed = [p for p in inspect.signature(synthetic_events).parameters]
    kwargs: dict[str, int | float] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or key not in allowed:
            raise ValueError(f"Bad synthetic option {part!r} in {text!r}; expected KEY=VALUE with KEY one of "
                             f"{allowed}.")
        try:
            kwargs[key] = int(value) if value.strip().lstrip("-").isdigit() else float(value)
        except ValueError:
            raise ValueError(f"Bad synthetic option {part!r} in {text!r}: {value!r} is not a number.") from None
    return kwargs


def _single_file(folder: Path, suffixes: tuple[str, ...], fmt: str) -> Path:
    matches = sorted(p for p in folder.iterdir() if p.suffix.lower() in suffixes)
    if len(matches) != 1:
        raise FileNotFoundError(f"Expected one {fmt} file in {folder}; found {[p.name for p in matches]}.")
    return matches[0]


def _has_header(path: Path, columns: tuple[str, ...]) -> bool:
    with path.open(encoding="utf-8", errors="replace") as handle:
        header = handle.readline()
    return all(column in header for column in columns)
