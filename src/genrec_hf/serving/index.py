"""Approximate top-k over item vectors with faiss (optional: `pip install "genrec-hf[ann]"`).

The index holds items 1..V-1 (padding never enters it) under maximum inner product; for `l2_normalize_scores`
models the vectors are normalised first (cosine). `score_temperature` divides every score, a monotone scale, so
the ranking is the index's and the returned scores are on the model's scale (faiss computes exact inner products
for the candidates it visits). Restrictions are honoured: a shared `allowed` mask goes to faiss as an
`IDSelectorBitmap`, per-row exclusions (the history) are removed after over-fetching, and a row for which the
index finds fewer than k allowed items falls back to exact scoring, so a restriction never shortens an answer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..models.genrec.scoring import TopItems, chunked_topk

INSTALL_HINT = 'pip install "genrec-hf[ann]"'
KINDS = ("flat", "ivf", "hnsw")
# HNSW candidates searched: the smallest of 16..256 with recall@10 >= 0.95 against exact top-k on the trained
# ML-100K and Amazon Toys models of benchmarks/serving (64 gave 0.941 on Toys, 128 0.964). The IVF defaults (about
# 4 sqrt(V) lists, a quarter of them probed) gave 0.996 and 0.997 there.
HNSW_EF_SEARCH = 128


def require_faiss() -> Any:
    """The faiss module, or an ImportError that says how to install it."""
    try:
        import faiss
    except ImportError:
        raise ImportError(f"Approximate top-k needs faiss, which is not installed: {INSTALL_HINT} "
                          "(or serve with exact top-k).") from None
    return faiss


def _as_float32(vectors: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(vectors, torch.Tensor):
        vectors = vectors.detach().float().cpu().numpy()
    return np.ascontiguousarray(vectors, dtype=np.float32)


class FaissIndex:
    """A faiss inner-product index over item vectors (row 0 = padding), searched like `chunked_topk`."""

    def __init__(self, index: Any, item_vectors: np.ndarray, *, kind: str, temperature: float = 1.0,
                 l2_normalize: bool = False, nprobe: int | None = None, ef_search: int | None = None) -> None:
        self.index = index
        self.item_vectors = item_vectors  # (V, d) as indexed (normalised when l2_normalize), row 0 = padding
        self.kind = kind
        self.temperature = float(temperature)
        self.l2_normalize = l2_normalize
        self.nprobe = nprobe
        self.ef_search = ef_search

    @classmethod
    def build(cls, item_vectors: torch.Tensor | np.ndarray, *, kind: str = "ivf", temperature: float = 1.0,
              l2_normalize: bool = False, nlist: int | None = None, nprobe: int | None = None, hnsw_m: int = 32,
              ef_construction: int = 80, ef_search: int = HNSW_EF_SEARCH, seed: int = 0,
              max_train_points: int | None = None) -> FaissIndex:
        """Index `item_vectors` (V, d), row 0 = padding.

        kind: "flat" (exact, a baseline), "ivf" (IVF-Flat, `nlist` lists, default ~4·sqrt(V); `nprobe` lists
        searched, default nlist/4) or "hnsw" (HNSW-Flat, `hnsw_m` links, `ef_search` candidates).
        `max_train_points`: IVF k-means trains on a seeded random sample of at most this many items (faiss's own
        cap is 256 per list), which bounds the build of a million-item index to seconds instead of minutes.
        """
        faiss = require_faiss()
        if kind not in KINDS:
            raise ValueError(f"index kind {kind!r}; expected one of {KINDS}.")
        if temperature <= 0:
            raise ValueError(f"temperature={temperature}; expected a positive float.")
        vectors = _as_float32(item_vectors).copy()
        if vectors.ndim != 2 or vectors.shape[0] < 2:
            raise ValueError(f"item_vectors must be (V >= 2, d) with row 0 = padding; got {vectors.shape}.")
        if l2_normalize:
            faiss.normalize_L2(vectors)
        items = np.ascontiguousarray(vectors[1:])
        num, dim = items.shape
        if kind == "flat":
            index = faiss.IndexFlatIP(dim)
        elif kind == "ivf":
            nlist = max(1, min(nlist or min(int(4 * np.sqrt(num)), num // 39), num))  # >= 39 training points a list
            nprobe = max(1, min(nprobe or max(1, nlist // 4), nlist))
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
            index.cp.seed = seed
            train = items
            if max_train_points is not None and num > max_train_points:
                rows = np.random.default_rng(seed).choice(num, size=max(max_train_points, nlist), replace=False)
                train = np.ascontiguousarray(items[np.sort(rows)])
            index.train(train)
            index.nprobe = nprobe
        else:
            index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = ef_construction
            index.hnsw.efSearch = ef_search
        index.add(items)
        return cls(index, vectors, kind=kind, temperature=temperature, l2_normalize=l2_normalize,
                   nprobe=nprobe if kind == "ivf" else None, ef_search=ef_search if kind == "hnsw" else None)

    @property
    def num_items(self) -> int:
        return int(self.index.ntotal)

    def _params(self, selector: Any) -> Any:
        faiss = require_faiss()
        if self.kind == "ivf":
            return faiss.SearchParametersIVF(sel=selector, nprobe=self.nprobe)
        if self.kind == "hnsw":
            return faiss.SearchParametersHNSW(sel=selector, efSearch=max(self.ef_search or 16, 16))
        return faiss.SearchParameters(sel=selector)

    def search(self, queries: torch.Tensor, k: int, *, exclude: torch.Tensor | None = None,
               allowed: torch.Tensor | None = None) -> TopItems:
        """`TopItems` of (B, d) queries, best first, with `chunked_topk`'s conventions (item 0 / -inf = no item).

        exclude: (B, H) item indices per row (0 ignored); allowed: (V,) bool mask shared by the batch.
        """
        faiss = require_faiss()
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k={k!r}; expected a positive integer number of items to return.")
        k = min(k, self.num_items)
        q = _as_float32(queries).copy()
        if self.l2_normalize:
            faiss.normalize_L2(q)
        batch = q.shape[0]
        excluded = [set() for _ in range(batch)]
        if exclude is not None:
            for row, values in enumerate(exclude.tolist()):
                excluded[row] = {v for v in values if v > 0}
        selector, bitmap, num_allowed = None, None, self.num_items
        if allowed is not None:
            mask = allowed.detach().cpu().numpy().astype(bool)[1:]
            num_allowed = int(mask.sum())
            bitmap = np.packbits(mask, bitorder="little")
            selector = faiss.IDSelectorBitmap(len(mask), faiss.swig_ptr(bitmap))
        fetch = min(k + max((len(e) for e in excluded), default=0), self.num_items)
        params = self._params(selector) if selector is not None or self.kind != "flat" else None
        scores, ids = self.index.search(q, fetch, params=params)
        del bitmap  # (faiss only borrowed it during the search)
        items = torch.zeros(batch, k, dtype=torch.long)
        out_scores = torch.full((batch, k), float("-inf"))
        fallback = []
        for row in range(batch):
            picked = [(int(i) + 1, float(s)) for i, s in zip(ids[row], scores[row])
                      if i >= 0 and int(i) + 1 not in excluded[row]][:k]
            possible = num_allowed - (len(excluded[row]) if allowed is None else
                                      sum(1 for e in excluded[row] if allowed[e]))
            if len(picked) < min(k, possible):
                fallback.append(row)
                continue
            for j, (index, score) in enumerate(picked):
                items[row, j], out_scores[row, j] = index, score / self.temperature
        if fallback:  # the index found too few allowed items for these rows: score them exactly
            rows = torch.tensor(fallback)
            top = chunked_topk(torch.from_numpy(q)[rows], torch.from_numpy(self.item_vectors), k,
                               exclude=None if exclude is None else exclude[rows], allowed=allowed,
                               temperature=self.temperature)
            items[rows], out_scores[rows] = top.items, top.scores
        return TopItems(items, out_scores)

    def save(self, directory: str | Path) -> Path:
        """Write `index.faiss` + `index.json` (kind, scale, search settings) and the vectors into `directory`."""
        faiss = require_faiss()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        faiss.write_index(self.index, str(directory / "index.faiss"))
        np.save(directory / "index_vectors.npy", self.item_vectors)
        meta = {"kind": self.kind, "temperature": self.temperature, "l2_normalize": self.l2_normalize,
                "nprobe": self.nprobe, "ef_search": self.ef_search, "num_items": self.num_items}
        (directory / "index.json").write_text(json.dumps(meta, indent=2))
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> FaissIndex:
        faiss = require_faiss()
        directory = Path(directory)
        meta = json.loads((directory / "index.json").read_text())
        return cls(faiss.read_index(str(directory / "index.faiss")), np.load(directory / "index_vectors.npy"),
                   kind=meta["kind"], temperature=meta["temperature"], l2_normalize=meta["l2_normalize"],
                   nprobe=meta["nprobe"], ef_search=meta["ef_search"])


def recall_at_k(approximate: torch.Tensor, exact: torch.Tensor) -> float:
    """Mean fraction of each row's exact top-k items (nonzero) that the approximate top-k also returned."""
    hits, total = 0, 0
    for a, e in zip(approximate.tolist(), exact.tolist()):
        wanted = {i for i in e if i > 0}
        hits += len(wanted & set(a))
        total += len(wanted)
    return hits / max(total, 1)
