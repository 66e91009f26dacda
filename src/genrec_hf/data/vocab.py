"""`ItemVocab`: raw item ids (strings) ↔ contiguous indices, saved next to every model as `item_vocab.json`."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

VOCAB_FILE = "item_vocab.json"
_FORMAT = "genrec_hf.item_vocab"
_VERSION = 1


def sort_raw_ids(raw_ids: Iterable[str], numeric: bool | None = None) -> list[str]:
    """Distinct raw ids in a deterministic order: numerically when every id is an integer, else as strings.

    `numeric` fixes the mode decided over a larger set (a shard of a log sorts its users in the log's mode);
    None decides it from these ids.
    """
    distinct = set(raw_ids)
    if numeric is None:
        numeric = all_integer_ids(distinct)
    return sorted(distinct, key=lambda raw: (int(raw), raw)) if numeric else sorted(distinct)


def all_integer_ids(raw_ids: Iterable[str]) -> bool:
    """True when Python reads every id as an integer (`int(raw)`), the condition for numeric id order."""
    try:
        for raw in raw_ids:
            int(raw)
    except ValueError:
        return False
    return True


class ItemVocab:
    """Raw item id ↔ index. Index 0 is padding; items take 1..V-1, so `len(vocab)` is the model's `vocab_size`.

    The order is the order given to the constructor; `ItemVocab.from_raw_ids` sorts ids numerically when they are all
    integers (MovieLens "1" → 1) and as strings otherwise, so the same catalog always gets the same indices.
    `item_info` maps raw id → small JSON metadata (title, genres, ...) and travels with the vocabulary.
    """

    def __init__(self, raw_ids: Sequence[str], item_info: dict[str, dict[str, Any]] | None = None) -> None:
        self._raw = [str(raw) for raw in raw_ids]
        self._index = {raw: i + 1 for i, raw in enumerate(self._raw)}
        if len(self._index) != len(self._raw):
            seen: set[str] = set()
            duplicate = next(raw for raw in self._raw if raw in seen or seen.add(raw))
            raise ValueError(f"Duplicate raw item id {duplicate!r} in the vocabulary.")
        self.item_info: dict[str, dict[str, Any]] = dict(item_info or {})

    @classmethod
    def from_raw_ids(cls, raw_ids: Iterable[str], item_info: dict[str, dict[str, Any]] | None = None) -> ItemVocab:
        """Vocabulary of the distinct ids, in `sort_raw_ids` order."""
        return cls(sort_raw_ids(str(raw) for raw in raw_ids), item_info)

    def __len__(self) -> int:
        return len(self._raw) + 1  # + padding

    def __contains__(self, raw: object) -> bool:
        return str(raw) in self._index

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ItemVocab) and self._raw == other._raw

    def __repr__(self) -> str:
        return f"ItemVocab({len(self._raw)} items + padding)"

    @property
    def num_items(self) -> int:
        """Catalog size without padding."""
        return len(self._raw)

    @property
    def raw_ids(self) -> list[str]:
        """Raw ids of indices 1..V-1, in index order."""
        return list(self._raw)

    def encode(self, raw: str | int) -> int:
        """Index of a raw id; a ValueError names an id the vocabulary does not know."""
        try:
            return self._index[str(raw)]
        except KeyError:
            raise ValueError(f"Unknown item id {str(raw)!r}: not in this vocabulary of {self.num_items} items "
                             "(new items need a vocabulary update or the cold-start item tower).") from None

    def add(self, raw_ids: Iterable[str | int], item_info: dict[str, dict[str, Any]] | None = None) -> list[int]:
        """Append new items (cold start: `model.add_items`); returns their indices. A duplicate or an id already
        in the vocabulary is a ValueError naming it."""
        new = [str(raw) for raw in raw_ids]
        seen: set[str] = set()
        for raw in new:
            if raw in self._index:
                raise ValueError(f"raw item id {raw!r} is already in the vocabulary (index {self._index[raw]}).")
            if raw in seen:
                raise ValueError(f"duplicate raw item id {raw!r} in the items to add.")
            seen.add(raw)
        for raw in new:
            self._index[raw] = len(self._raw) + 1
            self._raw.append(raw)
        self.item_info.update({str(k): v for k, v in (item_info or {}).items()})
        return [self._index[raw] for raw in new]

    def encode_many(self, raws: Iterable[str | int]) -> list[int]:
        return [self.encode(raw) for raw in raws]

    def decode(self, index: int) -> str:
        """Raw id of an index in 1..V-1 (0 is padding and has no raw id)."""
        index = int(index)
        if not 1 <= index <= len(self._raw):
            raise ValueError(f"Item index {index} is outside 1..{len(self._raw)} (0 is padding).")
        return self._raw[index - 1]

    def decode_many(self, indices: Iterable[int]) -> list[str]:
        return [self.decode(index) for index in indices]

    def save(self, directory: str | Path) -> Path:
        """Write `item_vocab.json` (ids in index order + JSON-safe item_info) into `directory`; returns its path."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        payload = {"format": _FORMAT, "version": _VERSION, "padding_index": 0, "items": self._raw,
                   "item_info": {raw: _json_safe(info) for raw, info in self.item_info.items() if raw in self._index}}
        path = directory / VOCAB_FILE
        path.write_text(json.dumps(payload, ensure_ascii=False, separators=(",", ":")), encoding="utf-8")
        return path

    @classmethod
    def load(cls, directory: str | Path) -> ItemVocab:
        """Read `directory/item_vocab.json` as written by `save`."""
        path = Path(directory) / VOCAB_FILE
        if not path.is_file():
            raise FileNotFoundError(f"no {VOCAB_FILE} in {directory}; was this model trained with genrec_hf?")
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
            items = payload["items"]
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise ValueError(f"{path} is not a genrec_hf item vocabulary ({error}).") from None
        return cls(items, payload.get("item_info") or {})


def _json_safe(value: Any) -> Any:
    """Metadata as plain JSON: numpy scalars → Python, NaN → None, tuples/sets → lists."""
    if hasattr(value, "tolist") and callable(value.tolist):  # numpy scalar or array
        value = value.tolist()
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)
