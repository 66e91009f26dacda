"""Raw event logs → a stream of normalised event batches, one input file at a time, never the whole log.

`open_source` finds the input files (one file, a glob or a folder of shards), reads each file's schema, checks that
all files agree, and returns an `EventSource`. `EventSource.batches(i)` streams file i as record batches of the
staged schema (`staged_schema`): user and item ids (int64 when the file stores integers, else trimmed strings),
unix seconds, rating, action id (or the action's text when names must be numbered over the whole log), the event's
position in the log (`seq`: file index << 40 | row, the tie-break "file order" of the in-memory loaders) and a hash
of the user id that decides its shard.

Parsing reuses the in-memory loaders' rules (`_parsing`, `tabular._resolve_columns`, RecBole typed headers) on each
batch, so a value the in-memory path accepts is read to the same number here, and a bad one is reported with its
file and line (csv, 1 = header) or row (Parquet, 0-based). Formats without a streaming reader (MovieLens, sequence
text, `synthetic`) are parsed by their in-memory loader and staged from that frame.
"""

from __future__ import annotations

import fnmatch
import glob
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
from pyarrow import fs

from .._parsing import check_columns, exact_ids, parse_numbers, parse_timestamps, unix_seconds
from ..events import LoadedEvents
from ..interactions import canonical_events
from ..load import detect_format, read_events
from ..recbole import _item_info as recbole_item_info
from ..recbole import _typed_header, find_inter_file
from ..tabular import CANONICAL, TABULAR_SUFFIXES, _resolve_columns

logger = logging.getLogger(__name__)

BATCH_ROWS = 1 << 20
SEQ_FILE_SHIFT = 40  # seq = file index << 40 | row: 2**40 rows per file, 2**23 files
PY_WHITESPACE = "".join(chr(c) for c in range(0x110000) if chr(c).isspace())  # what str.strip() removes
_STREAMED = ("csv", "parquet", "recbole")
_FNV_OFFSET, _FNV_PRIME = np.uint64(0xCBF29CE484222325), np.uint64(0x100000001B3)


def user_hash(ids: pa.Array) -> np.ndarray:
    """63-bit FNV-1a of each id's UTF-8 text (ints as their decimal text): the shard key, the same in every engine."""
    ids = ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids
    if pa.types.is_integer(ids.type):
        return _fnv_decimal(ids.to_numpy(zero_copy_only=False).astype(np.int64))
    offsets = np.frombuffer(ids.buffers()[1], dtype=np.int32)[ids.offset:ids.offset + len(ids) + 1]
    data = np.frombuffer(ids.buffers()[2], dtype=np.uint8) if ids.buffers()[2] is not None else np.zeros(1, np.uint8)
    starts, lengths = offsets[:-1], np.diff(offsets)
    hashes = np.full(len(ids), _FNV_OFFSET, dtype=np.uint64)
    for length in np.unique(lengths).tolist():  # ids of one length at a time: no per-byte masks
        rows = np.flatnonzero(lengths == length)
        part, first = hashes[rows], starts[rows]
        for j in range(length):
            part = (part ^ data[first + j]) * _FNV_PRIME
        hashes[rows] = part
    return (hashes & np.uint64(0x7FFF_FFFF_FFFF_FFFF)).astype(np.int64)


def _fnv_decimal(values: np.ndarray) -> np.ndarray:
    """`user_hash` of int64 ids without making their text: the decimal digits, most significant first."""
    hashes = np.full(len(values), _FNV_OFFSET, dtype=np.uint64)
    negative = values < 0
    hashes[negative] = (hashes[negative] ^ np.uint64(ord("-"))) * _FNV_PRIME
    magnitude = np.abs(values).astype(np.uint64)  # |-2**63| fits in uint64
    digits = 1 + np.searchsorted(np.uint64(10) ** np.arange(1, 20, dtype=np.uint64), magnitude, side="right")
    for count in np.unique(digits).tolist():
        rows = np.flatnonzero(digits == count)
        part, rest = hashes[rows], magnitude[rows]
        for power in range(count - 1, -1, -1):
            digit = (rest // np.uint64(10) ** np.uint64(power)) % np.uint64(10)
            part = (part ^ (digit + np.uint64(ord("0")))) * _FNV_PRIME
        hashes[rows] = part
    return (hashes & np.uint64(0x7FFF_FFFF_FFFF_FFFF)).astype(np.int64)


def staged_schema(user_kind: str, item_kind: str, action_text: bool) -> pa.Schema:
    """Columns of a staged event batch; `*_kind` is "int" or "str"."""
    id_type = {"int": pa.int64(), "str": pa.string()}
    fields = [("user_id", id_type[user_kind]), ("item_id", id_type[item_kind]), ("timestamp", pa.int64()),
              ("rating", pa.float64()), ("action", pa.int64())]
    if action_text:
        fields.append(("action_text", pa.string()))
    return pa.schema(fields + [("seq", pa.int64()), ("user_hash", pa.int64())])


@dataclass
class _FilePlan:
    """How one input file maps onto the staged columns: canonical name → column, and each column's kind."""

    path: str
    columns: dict[str, str]
    kinds: dict[str, str]

    def signature(self) -> tuple:
        return tuple(sorted(self.kinds.items()))


@dataclass
class EventSource:
    """The input of one prepare job (see the module docstring). Picklable: Spark executors read files through it."""

    text: str
    format: str
    name: str
    files: list[_FilePlan]
    schema: pa.Schema
    has_timestamps: bool
    star_actions: bool = False  # RecBole: the action is ceil(rating) when every rating is within 0.5..10
    column_map: dict[str, str] | None = None
    item_info: dict[str, dict[str, Any]] = field(default_factory=dict)
    loaded: pa.Table | None = None  # formats parsed in memory: their staged events

    @property
    def user_kind(self) -> str:
        return "int" if pa.types.is_integer(self.schema.field("user_id").type) else "str"

    @property
    def item_kind(self) -> str:
        return "int" if pa.types.is_integer(self.schema.field("item_id").type) else "str"

    @property
    def action_text(self) -> bool:
        return "action_text" in self.schema.names

    def describe(self) -> dict[str, Any]:
        """The manifest's `source` entry: what was read, not where it was read from at what time."""
        files = [{"path": plan.path, "bytes": file_size(plan.path)} for plan in self.files]
        return {"source": self.text, "format": self.format, "name": self.name, "column_map": self.column_map,
                "files": files}

    def label(self, seq: int) -> str:
        """'file, line N' / 'file, row N' of a staged `seq`."""
        index, row = seq >> SEQ_FILE_SHIFT, seq & ((1 << SEQ_FILE_SHIFT) - 1)
        if self.loaded is not None:
            return f"{self.name} events, row {row}"
        plan = self.files[index]
        return f"{plan.path}, line {row + 2}" if _is_text(plan.path) else f"{plan.path}, row {row}"

    def batches(self, file_index: int) -> Iterator[pa.RecordBatch]:
        """Staged batches of input file `file_index` (of the in-memory events when the format has no streaming
        reader: `file_index` 0 only)."""
        if self.loaded is not None:
            yield from self.loaded.to_batches(max_chunksize=BATCH_ROWS)
            return
        plan = self.files[file_index]
        row = 0
        first_time: Any = None
        for raw in _read_batches(plan, self.format):
            if raw.num_rows == 0:
                continue
            if first_time is None and "timestamp" in plan.columns:
                first_time = raw.column(plan.columns["timestamp"])[0].as_py()
            yield self._normalise(raw, plan, file_index, row, first_time)
            row += raw.num_rows
        if row == 0:
            raise ValueError(f"{plan.path} has columns {list(plan.columns.values())} but no events.")

    def _normalise(self, raw: pa.RecordBatch, plan: _FilePlan, file_index: int, row: int,
                   first_time: Any) -> pa.RecordBatch:
        text = _is_text(plan.path)
        where = {"label": plan.path, "first_line": row + 2 if text else row, "unit": "line" if text else "row"}
        n = raw.num_rows

        def column(name: str) -> Any:
            return raw.column(plan.columns[name])

        def series(name: str) -> pd.Series:
            return column(name).to_pandas()

        arrays: dict[str, Any] = {}
        for name in ("user_id", "item_id"):
            arrays[name] = _ids(column(name), plan.columns[name], where)
        if self.has_timestamps:
            arrays["timestamp"] = _timestamps(series("timestamp"), plan.columns["timestamp"], first_time,
                                              recbole=self.format == "recbole", where=where)
        else:
            arrays["timestamp"] = pa.nulls(n, pa.int64())
        if "rating" in plan.columns:
            rating = parse_numbers(series("rating"), column=plan.columns["rating"], integer=False,
                                   allow_missing=self.format != "recbole", **where)
            arrays["rating"] = np.nan_to_num(rating, nan=0.0)
        else:
            arrays["rating"] = np.zeros(n)
        arrays["action"] = np.zeros(n, dtype=np.int64)
        if "action" in plan.columns:
            if self.action_text:
                arrays["action_text"] = pc.utf8_trim(pc.cast(column("action"), pa.string()), PY_WHITESPACE)
            else:
                arrays["action"] = parse_numbers(series("action"), column=plan.columns["action"], integer=True,
                                                 **where)
                negative = np.flatnonzero(arrays["action"] < 0)
                if len(negative):
                    raise ValueError(f"{plan.path}, {where['unit']} {where['first_line'] + int(negative[0])}: column "
                                     f"{plan.columns['action']!r} has {int(arrays['action'][negative[0]])}; expected "
                                     "an action id >= 0 (0 = unknown).")
        arrays["seq"] = np.arange(row, row + n, dtype=np.int64) + (file_index << SEQ_FILE_SHIFT)
        arrays["user_hash"] = user_hash(arrays["user_id"])
        return pa.record_batch([pa.array(arrays[f.name], f.type) if not isinstance(arrays[f.name], pa.Array)
                                else arrays[f.name].cast(f.type) for f in self.schema], schema=self.schema)


def open_source(source: str | Path, format: str | None = None, *,
                column_map: dict[str, str] | None = None) -> EventSource:
    """Find and check the input files of `source` (a file, a glob, a folder of shards or `synthetic[:...]`)."""
    text = str(source)
    if format is None and (text == "synthetic" or text.startswith("synthetic:")):
        format = "synthetic"
    fmt = {"tsv": "csv", "atomic": "recbole", "pq": "parquet"}.get((format or "").lower(), (format or "").lower())
    if fmt and fmt not in _STREAMED:
        return _in_memory(text, fmt, column_map)
    paths = _input_files(text)
    if not fmt:
        fmt = _detect(paths, text, column_map)
        if fmt not in _STREAMED:
            return _in_memory(text, fmt, column_map)
    if fmt == "recbole":
        if column_map is not None:
            raise ValueError(f"column_map only applies to csv/parquet tables, not to RecBole .inter files ({text}).")
        inter = find_inter_file(Path(paths[0])) if len(paths) == 1 else None
        paths = [str(inter)] if inter else [p for p in paths if p.endswith(".inter")]
    plans = [_plan(path, fmt, column_map) for path in paths]
    first = plans[0]
    for plan in plans[1:]:
        if plan.signature() != first.signature():
            raise ValueError(f"mixed schemas: {plan.path} has {_show(plan)} but {first.path} has {_show(first)}; "
                             "every input file must have the same columns and column types.")
    kinds = first.kinds
    schema = staged_schema(kinds["user_id"], kinds["item_id"], kinds.get("action") == "text")
    name = _name(text, paths, fmt)
    info: dict[str, dict[str, Any]] = {}
    if fmt == "recbole":
        item_file = Path(paths[0]).with_suffix(".item")
        info = recbole_item_info(item_file) if len(paths) == 1 and item_file.is_file() else {}
    return EventSource(text=text, format=fmt, name=name, files=plans, schema=schema,
                       has_timestamps="timestamp" in first.columns,
                       star_actions=fmt == "recbole" and "rating" in first.columns, column_map=column_map,
                       item_info=info)


def _in_memory(text: str, fmt: str, column_map: dict[str, str] | None) -> EventSource:
    """A format without a streaming reader: its loader parses it, `canonical_events` makes the builder's frame."""
    loaded: LoadedEvents = read_events(text, fmt, column_map=column_map)
    frame = canonical_events(loaded.events, loaded.name)
    schema = staged_schema("str", "str", False)
    n = len(frame)
    users = pa.array(frame["user_id"].to_numpy(), pa.string())
    table = pa.table({"user_id": users, "item_id": pa.array(frame["item_id"].to_numpy(), pa.string()),
                      "timestamp": frame["timestamp"].to_numpy(np.int64), "rating": frame["rating"].to_numpy(),
                      "action": frame["action"].to_numpy(np.int64), "seq": np.arange(n, dtype=np.int64),
                      "user_hash": user_hash(users)}, schema=schema)
    return EventSource(text=text, format=fmt, name=loaded.name, files=[], schema=schema,
                       has_timestamps=loaded.has_timestamps, item_info=loaded.item_info, loaded=table)


def is_uri(text: str) -> bool:
    return "://" in text


def _filesystem(path: str) -> tuple[fs.FileSystem, str]:
    """(pyarrow filesystem, path in it) of a local path or a URI (s3://, gs://, hdfs://, file://)."""
    try:
        return fs.FileSystem.from_uri(path) if is_uri(path) else (fs.LocalFileSystem(), path)
    except (pa.ArrowInvalid, OSError) as error:
        raise ValueError(f"{path}: cannot open this location ({' '.join(str(error).split())}).") from None


def open_input(path: str, stream: bool = False) -> Any:
    filesystem, inner = _filesystem(path)
    return filesystem.open_input_stream(inner) if stream else filesystem.open_input_file(inner)


def _uri_files(text: str) -> list[str]:
    """The files of a URI: one file, a folder (recursively) or a glob (`*` within a name, `**` across folders)."""
    scheme, _, rest = text.partition("://")
    parts = rest.split("/")
    fixed = next((i for i, part in enumerate(parts) if any(ch in part for ch in "*?[")), len(parts))
    filesystem, base = _filesystem(f"{scheme}://{'/'.join(parts[:fixed])}")
    info = filesystem.get_file_info(base)
    if info.type == fs.FileType.File and fixed == len(parts):
        return [text]
    if info.type != fs.FileType.Directory:
        raise FileNotFoundError(f"Interaction data not found: {text} does not exist.")
    prefix = text[:len(text) - len(rest)] + "/".join(parts[:fixed])  # the URI of `base`
    found = filesystem.get_file_info(fs.FileSelector(base, recursive=fixed < len(parts)))
    pattern = "/".join(parts[fixed:])
    names = sorted(prefix + item.path[len(base):] for item in found if item.type == fs.FileType.File
                   and not item.base_name.startswith(("_", ".")) and (not pattern or fnmatch.fnmatch(
                       item.path[len(base):].lstrip("/"), pattern)))
    if not names:
        raise FileNotFoundError(f"the glob {text!r} matches no files; expected csv/tsv/parquet event files."
                                if pattern else f"{text} is an empty folder; expected event files.")
    return names


def _input_files(text: str) -> list[str]:
    """The files of a file / glob / folder source, sorted; hidden and `_`-prefixed names (Spark's `_SUCCESS`)
    are skipped in folders and globs."""
    if is_uri(text):
        return _uri_files(text)
    if any(ch in text for ch in "*?["):
        matches = sorted(p for p in glob.glob(str(Path(text).expanduser()), recursive=True)
                         if Path(p).is_file() and not Path(p).name.startswith(("_", ".")))
        if not matches:
            raise FileNotFoundError(f"the glob {text!r} matches no files; expected csv/tsv/parquet event files.")
        return matches
    path = Path(text).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"Interaction data not found: {path} does not exist.")
    if path.is_file():
        return [str(path)]
    files = sorted(str(p) for p in path.iterdir() if p.is_file() and not p.name.startswith(("_", ".")))
    if not files:
        raise FileNotFoundError(f"{path} is an empty folder; expected event files (csv/tsv/parquet shards).")
    return files


def _detect(paths: list[str], text: str, column_map: dict[str, str] | None) -> str:
    """The format of the input files: several tables → csv/parquet by suffix; one path → `detect_format`."""
    tables = [p for p in paths if p.lower().endswith(TABULAR_SUFFIXES)]
    if is_uri(text) and len(tables) == len(paths):  # remote inputs: tables named by their suffix
        kinds = {("parquet" if p.lower().endswith((".parquet", ".pq")) else "csv") for p in tables}
        if len(kinds) == 1:
            return kinds.pop()
    if len(paths) == 1 or not tables:
        target = Path(paths[0]) if len(paths) == 1 and not Path(text).is_dir() else Path(text)
        return detect_format(target, column_map)
    kinds = {("parquet" if p.lower().endswith((".parquet", ".pq")) else "csv") for p in tables}
    if len(kinds) > 1 or len(tables) < len(paths):
        others = sorted({Path(p).suffix or Path(p).name for p in paths})
        raise ValueError(f"mixed schemas: {text} holds files of kinds {others}; expected one kind of event table "
                         "(all .csv/.tsv or all .parquet).")
    return kinds.pop()


def _name(text: str, paths: list[str], fmt: str) -> str:
    """What the in-memory loader would call the log: the file's stem for one file, else the folder's name."""
    if len(paths) == 1:
        return Path(paths[0]).stem
    if is_uri(text):
        return Path(paths[0]).parent.name or fmt
    folder = Path(text) if Path(text).is_dir() else Path(paths[0]).parent
    return folder.resolve().name or fmt


def _is_text(path: str) -> bool:
    return not path.lower().endswith((".parquet", ".pq"))


def file_size(path: str) -> int:
    filesystem, inner = _filesystem(path)
    return int(filesystem.get_file_info(inner).size or 0)


def _csv_options(path: str, fmt: str) -> tuple[pa_csv.ParseOptions, str]:
    delimiter = "\t" if fmt == "recbole" or path.lower().endswith(".tsv") else ","
    return pa_csv.ParseOptions(delimiter=delimiter, quote_char=False if fmt == "recbole" else '"'), delimiter


def _header(path: str, fmt: str) -> list[str]:
    parse, _ = _csv_options(path, fmt)
    try:
        reader = pa_csv.open_csv(open_input(path, stream=True), parse_options=parse,
                                 read_options=pa_csv.ReadOptions(block_size=1 << 16))
    except pa.ArrowInvalid as error:
        if "Empty CSV file" in str(error):
            raise ValueError(f"{path} is empty; expected events, one per line.") from None
        raise ValueError(f"{path}: cannot parse the file ({error}).") from None
    names = reader.schema.names
    reader.close()
    return names


def _plan(path: str, fmt: str, column_map: dict[str, str] | None) -> _FilePlan:
    """Column mapping and kinds of one file, from its header (csv) or footer (Parquet)."""
    if fmt == "parquet":
        try:
            schema = pq.read_schema(open_input(path))
        except Exception as error:  # pyarrow raises several types for non-parquet input
            raise ValueError(f"{path}: cannot read as Parquet ({error}).") from None
        names, types = schema.names, {f.name: f.type for f in schema}
    else:
        names = _header(path, fmt)
        types = {name: pa.string() for name in names}
    if fmt == "recbole":
        frame = pd.DataFrame(columns=names)
        bare = _typed_header(frame, path)
        check_columns(bare, ["user_id", "item_id"], label=path,
                      hint="(RecBole names: user_id:token, item_id:token, rating:float, timestamp:float)")
        columns = {key: names[list(frame.columns).index(key)] for key in ("user_id", "item_id", "timestamp",
                                                                          "rating") if key in bare}
    else:
        unknown = sorted(set(column_map or {}) - set(CANONICAL))
        if unknown:
            raise ValueError(f"column_map keys {unknown} are not canonical names; expected some of "
                             f"{list(CANONICAL)}.")
        columns = _resolve_columns(names, column_map, path)
    kinds = {key: _kind(key, types[column], path, column) for key, column in columns.items()}
    return _FilePlan(path=path, columns=columns, kinds=kinds)


def _kind(key: str, arrow_type: pa.DataType, path: str, column: str) -> str:
    if pa.types.is_dictionary(arrow_type):
        arrow_type = arrow_type.value_type
    numeric = pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type)
    text = pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type)
    if key in ("user_id", "item_id") and (numeric or text):
        return "int" if numeric else "str"
    if key == "timestamp" and (numeric or text or pa.types.is_timestamp(arrow_type) or pa.types.is_date(arrow_type)):
        return "number" if numeric else "text" if text else "datetime"
    if key in ("rating", "action") and (numeric or text):
        return "number" if numeric and key == "rating" else "int" if numeric else "text"
    expected = {"user_id": "integer or string ids", "item_id": "integer or string ids",
                "timestamp": "numbers, date/times or strings", "rating": "numbers", "action": "integers or names"}
    raise ValueError(f"{path}: column {column!r} ({key}) has type {arrow_type}; expected {expected[key]}.")


def _show(plan: _FilePlan) -> str:
    return ", ".join(f"{key}={plan.columns[key]!r} ({kind})" for key, kind in sorted(plan.kinds.items()))


def _read_batches(plan: _FilePlan, fmt: str) -> Iterator[pa.RecordBatch]:
    """Raw record batches of the mapped columns of one file; read errors name the file."""
    needed = list(dict.fromkeys(plan.columns.values()))
    try:
        if fmt == "parquet":
            yield from pq.ParquetFile(open_input(plan.path)).iter_batches(batch_size=BATCH_ROWS, columns=needed)
            return
        parse, _ = _csv_options(plan.path, fmt)
        names = _header(plan.path, fmt)
        convert = pa_csv.ConvertOptions(column_types={name: pa.string() for name in names}, include_columns=needed,
                                        strings_can_be_null=False, quoted_strings_can_be_null=False)
        reader = pa_csv.open_csv(open_input(plan.path, stream=True), parse_options=parse, convert_options=convert,
                                 read_options=pa_csv.ReadOptions(block_size=32 << 20))
        yield from reader
    except (pa.ArrowInvalid, OSError) as error:
        raise ValueError(f"{plan.path}: cannot parse the file ({' '.join(str(error).split())}).") from None


def _ids(values: pa.Array | pa.ChunkedArray, column: str, where: dict[str, Any]) -> pa.Array:
    """An id column as int64 (integer / integral float storage) or trimmed non-empty strings (`exact_ids`)."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if pa.types.is_dictionary(values.type):
        values = values.dictionary_decode()
    if pa.types.is_floating(values.type):
        numbers = values.to_numpy(zero_copy_only=False)
        safe = np.where(np.isfinite(numbers), numbers, 0.5)
        if ((safe != np.round(safe)) | (np.abs(safe) > 2.0 ** 53)).any():
            exact_ids(values.to_pandas(), column=column, **where)  # raises, naming the row
        return pa.array(numbers.astype(np.int64))
    if pa.types.is_integer(values.type):
        if values.null_count:
            row = int(np.flatnonzero(values.is_null().to_numpy(zero_copy_only=False))[0])
            raise ValueError(f"{where['label']}, {where['unit']} {where['first_line'] + row}: column {column!r} "
                             "is empty; expected an id.")
        try:
            return values.cast(pa.int64())
        except pa.ArrowInvalid:
            raise ValueError(f"{where['label']}: column {column!r} holds ids beyond 2**63; expected 64-bit "
                             "integer ids or strings.") from None
    trimmed = pc.utf8_trim(values.cast(pa.string()), PY_WHITESPACE)
    empty = pc.or_(pc.is_null(trimmed), pc.equal(pc.utf8_length(trimmed), 0)).to_numpy(zero_copy_only=False)
    if empty.any():
        raise ValueError(f"{where['label']}, {where['unit']} {where['first_line'] + int(np.flatnonzero(empty)[0])}: "
                         f"column {column!r} is empty; expected an id.")
    return trimmed


def _timestamps(values: pd.Series, column: str, first_value: Any, *, recbole: bool,
                where: dict[str, Any]) -> np.ndarray:
    """Unix seconds of one batch; a text column keeps the kind (numbers or date/times) of its file's first value."""
    if recbole:  # RecBole `timestamp:float`: numbers only
        numbers = parse_numbers(values, column=column, integer=False, **where)
        return unix_seconds(numbers, values, column=column, **where)
    if values.dtype == object and len(values) and first_value is not None:
        numeric_file = not np.isnan(pd.to_numeric(pd.Series([str(first_value).strip()]), errors="coerce")[0])
        numeric_here = not np.isnan(pd.to_numeric(pd.Series([str(values.iloc[0]).strip()]), errors="coerce")[0])
        if numeric_file != numeric_here and str(values.iloc[0]).strip():
            kind = "unix seconds (a number" if numeric_file else "a date/time (not unix seconds"
            raise ValueError(f"{where['label']}, {where['unit']} {where['first_line']}: column {column!r} has "
                             f"{str(values.iloc[0])!r}; expected {kind}, as in the file's first row: "
                             f"{str(first_value)!r}); a column holds one kind of timestamp.")
    return parse_timestamps(values, column=column, **where)
