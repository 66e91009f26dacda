"""`GenRecItemTokenizer`: raw item ids (+ timestamps / action types) → GenRec model inputs, item indices → raw ids.

A recommender's "tokens" are catalog items: each event of a user's history is one token, its id the item's index in
the model's vocabulary (`item_vocab.json`, index 0 = padding). The tokenizer holds that vocabulary and turns
histories into exactly what the model reads: each history's most recent `model_max_length` events, left-padded with
0 to the longest (or to `max_length`), an attention mask, and timestamps / action ids aligned event by event.

It is a `PreTrainedTokenizerBase`, not a `PreTrainedTokenizer` / `TokenizersBackend`: those split text into
subwords (added-token tries, normalisers, a `tokenizers` model) and have no place for per-event timestamps. The base
class gives what an HF user relies on — `save_pretrained` / `from_pretrained` (`tokenizer_config.json` + the
vocabulary file), `AutoTokenizer` loading through `auto_map` with `trust_remote_code`, `BatchEncoding` outputs,
`padding_side` / `truncation_side`, `pad_token_id`, `convert_ids_to_tokens`, `decode` — and this class fills in the
item logic. (`AutoProcessor` falls back to `AutoTokenizer` for a folder without a processor config, so it loads
the same object.)

Unknown raw ids are handled as the model can (`unknown_items`):
  * "error" (ID-only models): a `ValueError` naming the id and where it is;
  * "oov" (models with a cold-start item tower): the event is kept as index 0 with attention 1, which the tower
    embeds as its OOV vector over a zero feature row, exactly how it represents an added item without metadata;
  * "skip": the event is dropped (with its timestamp / action).

Standard library + transformers (+ torch for tensors): copied next to saved checkpoints for `trust_remote_code`.
The `item_vocab.json` format is defined here (`read_item_vocab`, `write_item_vocab`), the one reader and writer of
it; genrec_hf's `ItemVocab` uses them.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from transformers.tokenization_utils_base import BatchEncoding, PreTrainedTokenizerBase

VOCAB_FILE = "item_vocab.json"
VOCAB_FORMAT = "genrec_hf.item_vocab"
VOCAB_VERSION = 1
PAD_TOKEN = "<pad>"
UNKNOWN_ITEMS = ("error", "oov", "skip")


class UnknownItemError(ValueError):
    """A raw item id the model's vocabulary does not know."""

    def __init__(self, item_id: str, where: str = "history") -> None:
        self.item_id = item_id
        self.where = where
        super().__init__(f"Unknown item id {item_id!r} in {where}: not in this model's catalog.")


def read_item_vocab(path: str | os.PathLike) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """(raw ids of indices 1..V-1, item_info) of an `item_vocab.json`; a bad file is a `ValueError` naming it."""
    path = Path(path)
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
        items = payload["items"]
        info = payload.get("item_info") or {}
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"{path} is not a genrec_hf item vocabulary ({error}).") from None
    if not isinstance(items, list) or not isinstance(info, dict):
        raise ValueError(f"{path} is not a genrec_hf item vocabulary: 'items' must be a list and 'item_info' an "
                         "object.")
    return [str(raw) for raw in items], info


def write_item_vocab(path: str | os.PathLike, raw_ids: Sequence[str],
                     item_info: Mapping[str, Mapping[str, Any]] | None = None) -> Path:
    """Write `item_vocab.json`: ids in index order + JSON-safe metadata of those ids (same input, same bytes)."""
    known = set(raw_ids)
    payload = {"format": VOCAB_FORMAT, "version": VOCAB_VERSION, "padding_index": 0, "items": list(raw_ids),
               "item_info": {raw: json_safe(info) for raw, info in (item_info or {}).items() if raw in known}}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, ensure_ascii=False, separators=(",", ":")), encoding="utf-8")
    return path


def json_safe(value: Any) -> Any:
    """Metadata as plain JSON: numpy scalars → Python, NaN → None, tuples/sets → lists."""
    if hasattr(value, "tolist") and callable(value.tolist):  # numpy scalar or array
        value = value.tolist()
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def index_raw_ids(raw_ids: Sequence[str]) -> dict[str, int]:
    """raw id → index (1-based, 0 is padding); a duplicate id is a `ValueError` naming it."""
    index = {raw: i + 1 for i, raw in enumerate(raw_ids)}
    if len(index) != len(raw_ids):
        seen: set[str] = set()
        duplicate = next(raw for raw in raw_ids if raw in seen or seen.add(raw))
        raise ValueError(f"Duplicate raw item id {duplicate!r} in the vocabulary.")
    return index


def append_raw_ids(raw_ids: list[str], index: dict[str, int], new: Iterable[str | int]) -> list[int]:
    """Append `new` ids to a vocabulary's `raw_ids` / `index` (in place) and return their indices; an id already
    there, or given twice, is a `ValueError` naming it (and nothing is appended)."""
    new = [str(raw) for raw in new]
    seen: set[str] = set()
    for raw in new:
        if raw in index:
            raise ValueError(f"raw item id {raw!r} is already in the vocabulary (index {index[raw]}).")
        if raw in seen:
            raise ValueError(f"duplicate raw item id {raw!r} in the items to add.")
        seen.add(raw)
    for raw in new:
        index[raw] = len(raw_ids) + 1
        raw_ids.append(raw)
    return [index[raw] for raw in new]


def _is_single(histories: Sequence[Any]) -> bool:
    """One history (a flat list of ids) rather than a batch of histories."""
    return not any(isinstance(h, (list, tuple)) for h in histories)


class GenRecItemTokenizer(PreTrainedTokenizerBase):
    """Raw item ids ↔ the indices of a GenRec model (index 0 = padding; items 1..V-1, V = `config.vocab_size`).

    Args:
        vocab_file: `item_vocab.json` (written by `save_pretrained`, or by genrec_hf next to every model).
        items: raw ids of indices 1..V-1, instead of a file (with `item_info`, their metadata: titles, genres, ...).
        unknown_items: "error", "oov" or "skip" (module docstring); a folder's tokenizer is saved with what its model
            supports.
        model_max_length: events the model reads per history (`config.max_position_embeddings`, or the training
            recipe's `data.max_length`); longer histories keep their most recent events.

    `tokenizer(histories, timestamps=..., action_ids=..., return_tensors="pt")` gives the model's inputs;
    `convert_ids_to_tokens` / `decode` map indices (e.g. `model.topk(...).items`) back to raw ids.
    """

    vocab_files_names = {"vocab_file": VOCAB_FILE}
    model_input_names = ["input_ids", "attention_mask", "timestamps", "action_ids"]
    padding_side = "left"  # the last event sits at the last position, where the model reads the user state
    truncation_side = "left"  # keep the most recent events
    _auto_class = "AutoTokenizer"  # as `register_for_auto_class()`: save_pretrained writes auto_map + this file

    def __init__(self, vocab_file: str | None = None, *, items: Sequence[str] | None = None,
                 item_info: Mapping[str, Mapping[str, Any]] | None = None, unknown_items: str = "error",
                 pad_token: str = PAD_TOKEN, **kwargs: Any) -> None:
        if (vocab_file is None) == (items is None):
            raise ValueError("GenRecItemTokenizer needs exactly one of vocab_file (an item_vocab.json) and items "
                             "(raw ids of indices 1..V-1).")
        if unknown_items not in UNKNOWN_ITEMS:
            raise ValueError(f"unknown_items={unknown_items!r}; expected one of {list(UNKNOWN_ITEMS)}.")
        if vocab_file is not None:
            items, item_info = read_item_vocab(vocab_file)
        self._raw: list[str] = [str(raw) for raw in items]
        self._index = index_raw_ids(self._raw)
        if pad_token in self._index:
            raise ValueError(f"raw item id {pad_token!r} is the padding token's name; pass another pad_token.")
        self.item_info: dict[str, dict[str, Any]] = {str(k): dict(v) for k, v in (item_info or {}).items()}
        self.unknown_items = unknown_items
        for key in ("added_tokens_decoder", "is_local", "local_files_only"):  # loading bookkeeping, not settings
            kwargs.pop(key, None)
        kwargs.setdefault("padding_side", "left")
        kwargs.setdefault("truncation_side", "left")
        super().__init__(pad_token=pad_token, unknown_items=unknown_items, **kwargs)

    # --- the vocabulary -----------------------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Indices including padding: the model's `config.vocab_size`."""
        return len(self._raw) + 1

    def __len__(self) -> int:
        return self.vocab_size

    def __contains__(self, raw: object) -> bool:
        return str(raw) in self._index

    @property
    def raw_ids(self) -> list[str]:
        """Raw ids of indices 1..V-1, in index order."""
        return list(self._raw)

    @property
    def num_items(self) -> int:
        """Catalog size without padding."""
        return len(self._raw)

    def get_vocab(self) -> dict[str, int]:
        return {str(self.pad_token): 0, **self._index}

    @property
    def added_tokens_decoder(self) -> dict[int, Any]:
        return {}

    def title(self, raw: str | int) -> str | None:
        """The item's title when the vocabulary has one (`item_info[raw]["title"]`)."""
        return self.item_info.get(str(raw), {}).get("title")

    def add(self, raw_ids: Iterable[str | int], item_info: Mapping[str, Mapping[str, Any]] | None = None) -> list[int]:
        """Append new items (as `model.add_items(raw_ids, features, vocab=tokenizer)` grows a tower model's catalog);
        returns their indices. An id already known, or given twice, is a `ValueError` naming it."""
        added = append_raw_ids(self._raw, self._index, raw_ids)
        self.item_info.update({str(k): dict(v) for k, v in (item_info or {}).items()})
        return added

    def encode_item(self, raw: str | int, where: str = "history") -> int:
        """Index of one raw id; an unknown id is an `UnknownItemError` naming it (whatever `unknown_items` says)."""
        index = self._index.get(str(raw))
        if index is None:
            raise UnknownItemError(str(raw), where)
        return index

    def convert_tokens_to_ids(self, tokens: str | int | Sequence[str | int]) -> int | list[int]:
        """Raw id(s) → index(es); the padding token → 0; unknown ids as `unknown_items` says ("oov" → 0)."""
        if isinstance(tokens, (str, int)):
            return self._token_id(tokens)
        return [self._token_id(token) for token in tokens]

    def _token_id(self, token: str | int) -> int:
        if str(token) == str(self.pad_token):
            return 0
        index = self._index.get(str(token))
        if index is None:
            if self.unknown_items != "oov":
                raise UnknownItemError(str(token))
            return 0
        return index

    def convert_ids_to_tokens(self, ids: int | Sequence[int], skip_special_tokens: bool = False) -> str | list[str]:
        """Index(es) → raw id(s); 0 → the padding token (left out with `skip_special_tokens`)."""
        if isinstance(ids, int) or (hasattr(ids, "ndim") and ids.ndim == 0):
            return self._raw_id(int(ids))
        return [self._raw_id(int(i)) for i in ids if not (skip_special_tokens and int(i) == 0)]

    def _raw_id(self, index: int) -> str:
        if index == 0:
            return str(self.pad_token)
        if not 1 <= index <= len(self._raw):
            raise ValueError(f"Item index {index} is outside 1..{len(self._raw)} (0 is padding).")
        return self._raw[index - 1]

    def _decode(self, token_ids: int | list[int], skip_special_tokens: bool = False, **kwargs: Any) -> list[str]:
        """`decode(ids)`: the raw ids of one sequence of indices (a list, not a string: items are not words)."""
        ids = [token_ids] if isinstance(token_ids, int) else list(token_ids)
        return self.convert_ids_to_tokens(ids, skip_special_tokens=skip_special_tokens)

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        return ",".join(tokens)

    # --- histories → model inputs -------------------------------------------------------------------------------

    def encode_histories(self, histories: Sequence[Sequence[str | int]], *,
                         timestamps: Sequence[Sequence[int]] | None = None,
                         action_ids: Sequence[Sequence[int]] | None = None,
                         where: str = "history") -> dict[str, list[list[int]] | None]:
        """Histories of raw ids (oldest first) → per-history item indices, attention and aligned timestamps /
        action ids, unknown ids handled as `unknown_items` says; no truncation or padding yet."""
        for name, rows in (("timestamps", timestamps), ("action_ids", action_ids)):
            if rows is not None and (len(rows) != len(histories)
                                     or any(len(r) != len(h) for r, h in zip(rows, histories))):
                raise ValueError(f"{name} must have one value per event of each history.")
        out: dict[str, list[list[int]] | None] = {"input_ids": [], "attention_mask": [],
                                                  "timestamps": None if timestamps is None else [],
                                                  "action_ids": None if action_ids is None else []}
        for row, history in enumerate(histories):
            keep, ids = [], []
            for position, raw in enumerate(history):
                index = self._index.get(str(raw))
                if index is None:
                    if self.unknown_items == "error":
                        raise UnknownItemError(str(raw), where)
                    if self.unknown_items == "skip":
                        continue
                    index = 0  # oov: a real event the tower embeds as OOV + zero features
                keep.append(position)
                ids.append(index)
            out["input_ids"].append(ids)
            out["attention_mask"].append([1] * len(ids))
            for name, rows in (("timestamps", timestamps), ("action_ids", action_ids)):
                if rows is not None:
                    values = list(rows[row])
                    out[name].append([int(values[p]) for p in keep])
        return out

    def __call__(self, histories: Sequence[str | int] | Sequence[Sequence[str | int]], *,
                 timestamps: Sequence[int] | Sequence[Sequence[int]] | None = None,
                 action_ids: Sequence[int] | Sequence[Sequence[int]] | None = None,
                 padding: bool | str = True, truncation: bool = True, max_length: int | None = None,
                 return_tensors: str | None = None, return_attention_mask: bool = True,
                 **kwargs: Any) -> BatchEncoding:
        """Model inputs of one history of raw ids (oldest first) or a batch of them.

        Each history keeps its most recent `max_length` events (default `model_max_length`; `truncation=False` keeps
        all), padded on the left with 0 (`padding=True` / "longest": to the longest history, "max_length": to
        `max_length`, False: not at all). `timestamps` (unix seconds) and `action_ids` have one value per event and
        are truncated and padded alike. `return_tensors="pt"` gives (B, T) tensors, as the model takes them.
        """
        if kwargs:
            raise TypeError(f"GenRecItemTokenizer got unexpected argument(s) {sorted(kwargs)}; it takes histories "
                            "of raw item ids, timestamps, action_ids, padding, truncation, max_length, "
                            "return_tensors.")
        if isinstance(histories, (str, int)) or not len(histories):
            raise ValueError("The history is empty: give a list of raw item ids (oldest first), or a list of them.")
        single = _is_single(histories)
        rows = [list(histories)] if single else [list(h) for h in histories]
        extra = {name: None if values is None else ([list(values)] if single else [list(v) for v in values])
                 for name, values in (("timestamps", timestamps), ("action_ids", action_ids))}
        encoded = self.encode_histories(rows, **extra)
        limit = max_length if max_length is not None else self.model_max_length
        if truncation and limit is not None:
            encoded = {k: None if v is None else [r[len(r) - min(len(r), limit):] for r in v]
                       for k, v in encoded.items()}
        if padding in (True, "longest", "max_length"):
            width = max(len(r) for r in encoded["input_ids"])
            if padding == "max_length":
                if max_length is None and limit is None:
                    raise ValueError("padding='max_length' needs max_length (or a model_max_length).")
                width = limit
            encoded = {k: None if v is None else [[0] * (width - len(r)) + r for r in v] for k, v in encoded.items()}
        elif padding not in (False, "do_not_pad"):
            raise ValueError(f"padding={padding!r}; expected True / 'longest', 'max_length' or False.")
        data = {k: v for k, v in encoded.items() if v is not None and (return_attention_mask or k != "attention_mask")}
        if single and return_tensors is None:
            data = {k: v[0] for k, v in data.items()}
        return BatchEncoding(data, tensor_type=return_tensors, prepend_batch_axis=False)

    # --- saving ---------------------------------------------------------------------------------------------------

    def save_vocabulary(self, save_directory: str, filename_prefix: str | None = None) -> tuple[str]:
        name = (filename_prefix + "-" if filename_prefix else "") + VOCAB_FILE
        return (str(write_item_vocab(Path(save_directory) / name, self._raw, self.item_info)),)

    def _save_pretrained(self, save_directory: str | os.PathLike, file_names: tuple[str, ...],
                         legacy_format: bool | None = None, filename_prefix: str | None = None) -> tuple[str, ...]:
        return file_names + self.save_vocabulary(str(save_directory), filename_prefix)


__all__ = ["GenRecItemTokenizer", "UnknownItemError", "VOCAB_FILE", "append_raw_ids", "index_raw_ids", "json_safe",
           "read_item_vocab", "write_item_vocab"]
