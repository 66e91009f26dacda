"""`ItemVocab`: raw item ids (strings) ↔ contiguous indices, saved next to every model as `item_vocab.json`.

The file format belongs to the item tokenizer of the remote-code closure (`models/genrec/tokenization_genrec.py`,
shipped with every checkpoint), so the package and a Hub user's `AutoTokenizer` read and write the same bytes;
`save_item_tokenizer` writes the tokenizer (its config + this file) into a model or adapter folder.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ..models.genrec.configuration_genrec import GenRecConfig
from ..models.genrec.tokenization_genrec import (VOCAB_FILE, GenRecItemTokenizer, append_raw_ids, index_raw_ids,
                                                 read_item_vocab, write_item_vocab)


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
        self._index = index_raw_ids(self._raw)
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
        added = append_raw_ids(self._raw, self._index, raw_ids)
        self.item_info.update({str(k): v for k, v in (item_info or {}).items()})
        return added

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
        return write_item_vocab(Path(directory) / VOCAB_FILE, self._raw, self.item_info)

    @classmethod
    def load(cls, directory: str | Path) -> ItemVocab:
        """Read `directory/item_vocab.json` as written by `save`."""
        path = Path(directory) / VOCAB_FILE
        if not path.is_file():
            raise FileNotFoundError(f"no {VOCAB_FILE} in {directory}; was this model trained with genrec_hf?")
        return cls(*read_item_vocab(path))

    def tokenizer(self, config: GenRecConfig, unknown_items: str | None = None) -> GenRecItemTokenizer:
        """The item tokenizer of a model with this vocabulary. Unknown ids (`unknown_items` unless given): the OOV
        event of a model with an item tower, an error otherwise; histories keep their most recent
        `max_position_embeddings` events (what the model reads)."""
        if unknown_items is None:
            unknown_items = "oov" if config.item_tower_config is not None else "error"
        return GenRecItemTokenizer(items=self._raw, item_info=self.item_info, unknown_items=unknown_items,
                                   model_max_length=config.max_position_embeddings)


def save_item_tokenizer(directory: str | Path, vocab: ItemVocab, config: GenRecConfig) -> None:
    """Write the item tokenizer into a model or adapter folder: `item_vocab.json`, `tokenizer_config.json` (with
    `auto_map`) and `tokenization_genrec.py`, so `AutoTokenizer.from_pretrained(folder, trust_remote_code=True)`
    maps raw ids without genrec_hf. An older folder with `item_vocab.json` alone still loads everywhere in
    genrec_hf (and with `GenRecItemTokenizer.from_pretrained`)."""
    vocab.tokenizer(config).save_pretrained(str(directory))
