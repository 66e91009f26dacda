"""Shared parsing helpers: every bad input becomes a ValueError / FileNotFoundError naming file, line and column."""

from __future__ import annotations

import io
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


def require_path(path: Path, what: str) -> Path:
    """`path` itself, or a FileNotFoundError saying what was expected there."""
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {path} does not exist.")
    return path


def read_table(
    source: Path | str | bytes,
    *,
    label: str,
    sep: str,
    names: list[str] | None = None,
    encoding: str = "utf-8",
    quoting: bool = True,
    as_strings: bool = True,
) -> pd.DataFrame:
    """Read a delimited text table (`names` given = headerless file); parse errors name the file.

    `source` is a path or the raw bytes of a zip member. `as_strings=False` lets pandas infer numeric columns (fast
    path for big numeric logs; a column with a bad value stays text and `parse_numbers` then names its line). A
    multi-character `sep` such as MovieLens' `::` is replaced by a tab first, so the C parser reads it.
    """
    raw = source if isinstance(source, bytes) else Path(source).read_bytes()
    if not raw or raw.isspace():
        raise ValueError(f"{label} is empty; expected events, one per line.")
    if len(sep) > 1:
        raw, sep = raw.replace(sep.encode(), b"\t"), "\t"
    try:
        frame = pd.read_csv(io.BytesIO(raw), sep=sep, header=None if names else 0, names=names,
                            dtype=str if as_strings else None, keep_default_na=False, quoting=0 if quoting else 3,
                            encoding=encoding, engine="c")
    except pd.errors.ParserError as error:
        raise ValueError(f"{label}: cannot parse the file ({error}).") from None
    except pd.errors.EmptyDataError:
        raise ValueError(f"{label} is empty; expected events, one per line.") from None
    except UnicodeDecodeError as error:
        raise ValueError(f"{label}: not {encoding} text ({error.reason} at byte {error.start}).") from None
    if len(frame) == 0:
        raise ValueError(f"{label} has a header ({', '.join(map(str, frame.columns))}) but no events.")
    return frame


def check_columns(present: Iterable[str], required: Iterable[str], *, label: str, hint: str = "") -> None:
    """ValueError naming the required columns that are missing and the columns that exist."""
    present = list(present)
    missing = [c for c in required if c not in present]
    if missing:
        raise ValueError(f"{label}: missing required column(s) {missing}; the file has columns {present}."
                         + (f" {hint}" if hint else ""))


def parse_numbers(
    values: pd.Series,
    *,
    label: str,
    column: str,
    first_line: int,
    integer: bool,
    allow_missing: bool = False,
    unit: str = "line",
) -> np.ndarray:
    """Strings or numbers → int64 / float64 (NaN where missing and allowed); the first bad value is reported with
    its line (row i is `unit` `first_line + i`)."""
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        numbers = values.to_numpy(dtype=np.float64, na_value=np.nan)
        missing = np.isnan(numbers)
        bad = np.zeros(len(values), dtype=bool)
    else:
        text = values.astype(str).str.strip()
        missing = values.isna().to_numpy() | (text == "").to_numpy()
        numbers = pd.to_numeric(text.where(~missing, None), errors="coerce").to_numpy(dtype=np.float64,
                                                                                     na_value=np.nan)
        bad = np.isnan(numbers) & ~missing
    if not allow_missing:
        bad |= missing
    finite = ~np.isnan(numbers)
    bad |= finite & np.isinf(numbers)
    if integer:
        bad |= finite & ~np.isinf(numbers) & (numbers != np.round(numbers))
    if bad.any():
        position = int(np.flatnonzero(bad)[0])
        expected = "an integer" if integer else "a number"
        shown = "an empty value" if missing[position] else _quoted(values.iloc[position])
        raise ValueError(f"{label}, {unit} {first_line + position}: column {column!r} has {shown}; "
                         f"expected {expected}.")
    return numbers.astype(np.int64) if integer and not allow_missing else numbers


def parse_timestamps(values: pd.Series, *, label: str, column: str, first_line: int,
                     unit: str = "line") -> np.ndarray:
    """Unix seconds from numbers or from datetime strings ("2020-01-31 12:00:00", ISO 8601, ...); UTC if naive."""
    if pd.api.types.is_datetime64_any_dtype(values):
        return _datetime_seconds(values)
    if pd.api.types.is_numeric_dtype(values):
        numbers = values.to_numpy(dtype=np.float64)
        if np.isnan(numbers).any():
            position = int(np.flatnonzero(np.isnan(numbers))[0])
            raise ValueError(f"{label}, {unit} {first_line + position}: column {column!r} is empty; "
                             "expected a timestamp.")
        return np.floor(numbers).astype(np.int64)
    text = values.astype(str).str.strip()
    numbers = pd.to_numeric(text, errors="coerce")
    if not numbers.isna().any():
        return np.floor(numbers.to_numpy(dtype=np.float64)).astype(np.int64)
    parsed = pd.to_datetime(text, errors="coerce", utc=True, format="mixed")
    if parsed.isna().any():
        position = int(np.flatnonzero(parsed.isna().to_numpy())[0])
        raise ValueError(f"{label}, {unit} {first_line + position}: column {column!r} has "
                         f"{_quoted(values.iloc[position])}; expected unix seconds or a date/time such as "
                         "'2020-01-31 12:00:00'.")
    return _datetime_seconds(parsed)


def _quoted(value: Any) -> str:
    """A cell as the user wrote it, quoted: '2.5', 'abc' (numpy scalars unwrapped)."""
    return repr(str(value.item() if hasattr(value, "item") else value))


def _datetime_seconds(values: Any) -> np.ndarray:
    series = pd.Series(values)
    if series.dt.tz is None:
        series = series.dt.tz_localize("UTC")
    seconds = (series.dt.tz_convert("UTC") - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)
    return seconds.to_numpy(dtype=np.int64)


def star_actions(ratings: np.ndarray) -> np.ndarray | None:
    """Star ratings as action types: ceil(rating) (0.5 → 1, 4.5 → 5); None unless every rating is within 0.5..10.

    A rating scale is the only action signal explicit-feedback logs have, so MovieLens-style logs get 1..5 (or 1..10)
    as action ids and a model can embed "rated 5" differently from "rated 1".
    """
    if len(ratings) == 0 or np.isnan(ratings).any() or ratings.min() < 0.5 or ratings.max() > 10:
        return None
    return np.ceil(ratings).astype(np.int64)
