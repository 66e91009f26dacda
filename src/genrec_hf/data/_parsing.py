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
    its line (row i is `unit` `first_line + i`). Integers must fit in int64."""
    if integer and not allow_missing and values.dtype.kind == "i" and not values.isna().any():  # exact int64
        return values.to_numpy(dtype=np.int64)
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
        with np.errstate(invalid="ignore"):
            bad |= finite & ~np.isinf(numbers) & ((numbers != np.round(numbers)) | (np.abs(numbers) >= 2.0 ** 63))
    if bad.any():
        position = int(np.flatnonzero(bad)[0])
        expected = "an integer" if integer else "a number"
        if integer and finite[position] and not np.isinf(numbers[position]) and abs(numbers[position]) >= 2.0 ** 63:
            expected += " that fits in 64 bits"
        shown = "an empty value" if missing[position] else _quoted(values.iloc[position])
        raise ValueError(f"{label}, {unit} {first_line + position}: column {column!r} has {shown}; "
                         f"expected {expected}.")
    return numbers.astype(np.int64) if integer and not allow_missing else numbers


def parse_integer_ids(values: pd.Series, *, label: str, column: str, first_line: int,
                      unit: str = "line") -> np.ndarray:
    """Ids of a format that defines them as integers (MovieLens) → their decimal strings.

    Text must be written as an integer ('12', not '12.0' or '12.7'), so ids that differ as text never merge.
    """
    if values.dtype.kind == "i" and not values.isna().any():
        return values.to_numpy(dtype=np.int64).astype(str)
    text = values.astype(str).str.strip()
    bad = ~text.str.fullmatch(r"[+-]?\d+").to_numpy(dtype=bool) | values.isna().to_numpy()
    if bad.any():
        position = int(np.flatnonzero(bad)[0])
        empty = bool(values.isna().iloc[position]) or text.iloc[position] == ""
        shown = "an empty value" if empty else _quoted(values.iloc[position])
        raise ValueError(f"{label}, {unit} {first_line + position}: column {column!r} has {shown}; expected an "
                         "integer id written as digits (ids such as '12.0' or '12.7' are not integers).")
    return text.map(lambda raw: str(int(raw))).to_numpy(dtype=object)


def exact_ids(values: pd.Series, *, label: str, column: str, first_line: int, unit: str = "line") -> pd.Series:
    """An id column → strings exactly as written; a float column (Parquet) → '12' for 12.0, an error for 12.7.

    Text ids are never reinterpreted ('12' and '12.0' stay two ids). A float column has no written form: only
    integral values that float64 holds exactly (|id| <= 2**53) are ids; they print as integers.
    """
    if pd.api.types.is_float_dtype(values):
        numbers = values.to_numpy(dtype=np.float64, na_value=np.nan)
        safe = np.where(np.isfinite(numbers), numbers, 0.5)  # NaN and ±inf count as non-integral
        bad = (safe != np.round(safe)) | (np.abs(safe) > 2.0 ** 53)
        if bad.any():
            position = int(np.flatnonzero(bad)[0])
            if np.isnan(numbers[position]):
                raise ValueError(f"{label}, {unit} {first_line + position}: column {column!r} is empty; "
                                 "expected an id.")
            raise ValueError(f"{label}, {unit} {first_line + position}: column {column!r} has "
                             f"{_quoted(values.iloc[position])} in a float column; expected integer or string ids "
                             "(a float id is not exact: store the column as integers or strings).")
        return pd.Series(numbers.astype(np.int64).astype(str), index=values.index)
    text = values.astype(str).str.strip()
    empty = ((text == "") | values.isna()).to_numpy()
    if empty.any():
        position = int(np.flatnonzero(empty)[0])
        raise ValueError(f"{label}, {unit} {first_line + position}: column {column!r} is empty; expected an id.")
    return text


# Unix seconds of 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z: beyond them a "timestamp" is not seconds.
MIN_UNIX_SECONDS = -62_135_596_800
MAX_UNIX_SECONDS = 253_402_300_799


def unix_seconds(numbers: np.ndarray, values: pd.Series, *, label: str, column: str, first_line: int,
                 unit: str = "line") -> np.ndarray:
    """Finite numbers within years 1..9999 → int64 seconds (floored); the first other value is reported."""
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(numbers) | (numbers < MIN_UNIX_SECONDS) | (numbers >= MAX_UNIX_SECONDS + 1)
    if bad.any():
        position = int(np.flatnonzero(bad)[0])
        value = float(numbers[position])
        hint = ""
        if np.isfinite(value) and MAX_UNIX_SECONDS < value <= MAX_UNIX_SECONDS * 1e6:
            hint = " (a time in milliseconds or microseconds? convert it to seconds)"
        raise ValueError(f"{label}, {unit} {first_line + position}: column {column!r} has "
                         f"{_quoted(values.iloc[position])}; expected unix seconds of a date between years 1 and "
                         f"9999 ({MIN_UNIX_SECONDS}..{MAX_UNIX_SECONDS}){hint}.")
    return np.floor(numbers).astype(np.int64)


def parse_timestamps(values: pd.Series, *, label: str, column: str, first_line: int,
                     unit: str = "line") -> np.ndarray:
    """Unix seconds from numbers or from datetime strings ("2020-01-31 12:00:00", ISO 8601, ...); UTC if naive.

    A column holds one kind: its first value decides whether it is unix seconds or date/times, and the first value
    of the other kind (or of neither) is reported with its line.
    """
    def where(position: int) -> str:
        return f"{label}, {unit} {first_line + position}: column {column!r}"

    if pd.api.types.is_datetime64_any_dtype(values):
        if values.isna().any():
            raise ValueError(f"{where(int(np.flatnonzero(values.isna().to_numpy())[0]))} is empty; "
                             "expected a timestamp.")
        return _datetime_seconds(values)
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        numbers = values.to_numpy(dtype=np.float64, na_value=np.nan)
        if np.isnan(numbers).any():
            raise ValueError(f"{where(int(np.flatnonzero(np.isnan(numbers))[0]))} is empty; expected a timestamp.")
        return unix_seconds(numbers, values, label=label, column=column, first_line=first_line, unit=unit)
    text = values.astype(str).str.strip()
    empty = (values.isna() | (text == "")).to_numpy()
    if empty.any():
        raise ValueError(f"{where(int(np.flatnonzero(empty)[0]))} is empty; expected a timestamp.")
    numbers = pd.to_numeric(text, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    numeric = ~np.isnan(numbers)
    if len(numeric) == 0 or numeric[0]:
        if not numeric.all():
            position = int(np.flatnonzero(~numeric)[0])
            raise ValueError(f"{where(position)} has {_quoted(values.iloc[position])}; expected unix seconds (a "
                             f"number, as on {unit} {first_line}: {_quoted(values.iloc[0])}).")
        return unix_seconds(numbers, values, label=label, column=column, first_line=first_line, unit=unit)
    parsed = pd.to_datetime(text, errors="coerce", utc=True, format="mixed")
    bad = parsed.isna().to_numpy() | numeric
    if bad.any():
        position = int(np.flatnonzero(bad)[0])
        if numeric[position]:
            raise ValueError(f"{where(position)} has {_quoted(values.iloc[position])}; expected a date/time as on "
                             f"{unit} {first_line} ({_quoted(values.iloc[0])}), not unix seconds: a column holds "
                             "one kind of timestamp.")
        raise ValueError(f"{where(position)} has {_quoted(values.iloc[position])}; expected unix seconds or a "
                         "date/time such as '2020-01-31 12:00:00'.")
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
