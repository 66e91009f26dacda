"""Cold start (paper §5): ID / OOV embedding, semantic tower φ_sem, fusion ψ, collaborative-embedding masking.

Item i is represented by `v_i = ψ(ẽ_i, z_i)`:

    ẽ_i = e_i (its ID embedding) when the item has collaborative signal (`item_known[i]`), else a learned OOV vector;
          in training, also the OOV vector with probability `mask_prob` (collaborative-embedding masking);
    z_i = φ_sem(x_i), a small MLP over the item's feature row x_i (`item_features[i]`: multi-hot categories,
          normalised numbers, text / knowledge-graph embeddings, laid out by `item_tower_config.feature_schema`);
    ψ   = "sum" (learned per-dimension weighted sum), "gate" (learned sigmoid gate) or "semantic" (z alone).

The same v_i feeds the backbone as an input event and is a candidate of the decoding head: with tied embeddings
(the default) the two sides share every weight; with an untied or projected head (width d // r) the output side has
its own ID table (the head's), its own OOV vector, output projection and fusion weights. Sampled-softmax negatives
are rows of the same fused table, so they get their fused vectors too.

The feature matrix and the known-items mask are persistent buffers: `save_pretrained` writes them into
model.safetensors and `from_pretrained` (remote code included) restores them; the schema is in config.json.
`add_items` grows the catalog without retraining: new ID rows are never used (new items are not known), so a new
item is scored from its features alone, `v = ψ(OOV, z)`.

Torch only (no genrec_hf imports): copied next to saved checkpoints for `trust_remote_code` loading.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .configuration_item_tower import GenRecItemTowerConfig

logger = logging.getLogger(__name__)


class GenRecItemFusion(nn.Module):
    """ψ(ẽ, z) for one side (input or output), in width `dim`."""

    def __init__(self, fusion: str, dim: int) -> None:
        super().__init__()
        self.fusion = fusion
        if fusion == "sum":
            self.id_weight = nn.Parameter(torch.ones(dim))
            self.semantic_weight = nn.Parameter(torch.ones(dim))
        elif fusion == "gate":
            self.gate_proj = nn.Linear(2 * dim, dim)

    def forward(self, id_vectors: torch.Tensor, semantic: torch.Tensor | None) -> torch.Tensor:
        if semantic is None:  # no features: the ID / OOV vector alone
            return id_vectors
        if self.fusion == "semantic":
            return semantic
        if self.fusion == "sum":
            return self.id_weight * id_vectors + self.semantic_weight * semantic
        gate = torch.sigmoid(self.gate_proj(torch.cat([id_vectors, semantic], dim=-1)))
        return gate * id_vectors + (1.0 - gate) * semantic


class GenRecItemTower(nn.Module):
    """φ_sem + OOV vectors + ψ for both sides, and the catalog's feature rows (see the module docstring).

    Args:
        tower_config: the `GenRecItemTowerConfig`.
        vocab_size: item indices including padding (row 0).
        input_dim: width of input item embeddings (`hidden_size`).
        output_dim: width of item output vectors (`head_output_size`).
        shared: one set of weights for both sides (tied embeddings, equal widths).
        initializer_range: std of the OOV vectors' initialisation.
    """

    def __init__(self, tower_config: GenRecItemTowerConfig, vocab_size: int, input_dim: int, output_dim: int,
                 shared: bool, initializer_range: float = 0.02) -> None:
        super().__init__()
        self.tower_config = tower_config
        self.shared = shared
        feature_dim = tower_config.feature_dim
        self.feature_dim = feature_dim
        self.mask_prob = float(tower_config.mask_prob)
        if feature_dim:
            self.register_buffer("item_features", torch.zeros(vocab_size, feature_dim))
            layers: list[nn.Module] = []
            width = feature_dim
            for _ in range(tower_config.num_tower_layers - 1):
                layers += [nn.Linear(width, tower_config.tower_hidden_size), nn.GELU(),
                           nn.Dropout(tower_config.tower_dropout)]
                width = tower_config.tower_hidden_size
            self.semantic_mlp = nn.Sequential(*layers) if layers else nn.Identity()
            self.semantic_input_proj = nn.Linear(width, input_dim)
            self.semantic_output_proj = None if shared else nn.Linear(width, output_dim)
        else:
            self.item_features = None
            self.semantic_mlp = self.semantic_input_proj = self.semantic_output_proj = None
        known = torch.ones(vocab_size, dtype=torch.bool)
        known[0] = False
        self.register_buffer("item_known", known)
        self.oov_input = nn.Parameter(torch.randn(input_dim) * initializer_range)
        self.oov_output = None if shared else nn.Parameter(torch.randn(output_dim) * initializer_range)
        self.input_fusion = GenRecItemFusion(tower_config.fusion, input_dim)
        self.output_fusion = None if shared else GenRecItemFusion(tower_config.fusion, output_dim)

    # --- the two sides ---------------------------------------------------------------------------------------------

    def _semantic_table(self, output_side: bool) -> torch.Tensor | None:
        """(V, width) z_i of every item for one side, or None without features."""
        if self.item_features is None:
            return None
        hidden = self.semantic_mlp(self.item_features)
        proj = self.semantic_output_proj if output_side and self.semantic_output_proj is not None \
            else self.semantic_input_proj
        return proj(hidden)

    def _keep_id(self, known: torch.Tensor) -> torch.Tensor:
        """Where the ID embedding is used: known items, minus a `mask_prob` share of them in training."""
        if self.training and self.mask_prob > 0:
            return known & (torch.rand(known.shape, device=known.device) >= self.mask_prob)
        return known

    def input_vectors(self, input_ids: torch.Tensor, id_vectors: torch.Tensor) -> torch.Tensor:
        """(B, T, d) fused input vectors of `input_ids` from their (B, T, d) ID embeddings (masking per event)."""
        keep = self._keep_id(self.item_known[input_ids])
        ids = torch.where(keep.unsqueeze(-1), id_vectors, self.oov_input.to(id_vectors.dtype))
        table = self._semantic_table(output_side=False)
        semantic = None if table is None else table[input_ids].to(id_vectors.dtype)
        return self.input_fusion(ids, semantic)

    def output_vectors(self, id_table: torch.Tensor) -> torch.Tensor:
        """(V, d_out) fused item output vectors from the (V, d_out) ID table (masking per catalog row)."""
        oov = self.oov_input if self.shared else self.oov_output
        keep = self._keep_id(self.item_known)
        ids = torch.where(keep.unsqueeze(-1), id_table, oov.to(id_table.dtype))
        table = self._semantic_table(output_side=True)
        fusion = self.input_fusion if self.shared else self.output_fusion
        vectors = fusion(ids, None if table is None else table.to(id_table.dtype))
        not_padding = (torch.arange(vectors.shape[0], device=vectors.device) != 0).unsqueeze(-1)
        return vectors * not_padding.to(vectors.dtype)

    # --- the catalog -----------------------------------------------------------------------------------------------

    @torch.no_grad()
    def set_item_features(self, features: torch.Tensor | None = None, known: torch.Tensor | None = None) -> None:
        """Replace the (V, F) feature rows and/or the (V,) known-items mask (row 0 = padding is never known and has
        no features)."""
        vocab_size = self.item_known.shape[0]
        if features is not None:
            expected = (vocab_size, self.feature_dim)
            if tuple(features.shape) != expected:
                raise ValueError(f"item features have shape {tuple(features.shape)}; expected {expected} (one row "
                                 f"per item index, {self.feature_dim} columns as item_tower_config.feature_schema "
                                 f"says: {self.tower_config.feature_names}).")
            if not torch.isfinite(features).all():
                raise ValueError("item features contain NaN or infinite values; fill missing values first.")
            if self.item_features is not None:
                self.item_features.copy_(features.to(self.item_features))
                # row 0 (padding) has no features: an OOV event (index 0, attended: the item tokenizer's
                # unknown_items="oov") is then embedded exactly as a new item added without metadata
                self.item_features[0] = 0
        if known is not None:
            if tuple(known.shape) != (vocab_size,):
                raise ValueError(f"known-items mask has shape {tuple(known.shape)}; expected ({vocab_size},).")
            self.item_known.copy_(known.bool())
            self.item_known[0] = False

    @torch.no_grad()
    def resize(self, vocab_size: int) -> None:
        """Fit the buffers to a catalog of `vocab_size` indices: kept rows stay, new rows are zero features and
        not known (so new items use the OOV vector until `set_item_features` says otherwise)."""
        old = self.item_known.shape[0]
        if vocab_size == old:
            return
        keep = min(old, vocab_size)
        known = torch.zeros(vocab_size, dtype=torch.bool, device=self.item_known.device)
        known[:keep] = self.item_known[:keep]
        self.item_known = known
        if self.item_features is not None:
            features = self.item_features.new_zeros(vocab_size, self.feature_dim)
            features[:keep] = self.item_features[:keep]
            self.item_features = features

    def encode_features(self, features: Mapping[str, Mapping[str, Any]] | Sequence[Mapping[str, Any] | None]
                        | torch.Tensor, raw_ids: Sequence[str]) -> tuple[torch.Tensor, list[str]]:
        """(n, F) feature rows for `raw_ids` from a tensor, or from per-item metadata (see `encode_item_metadata`);
        returns the rows and the raw ids that had no metadata at all (zero rows)."""
        n = len(raw_ids)
        if isinstance(features, torch.Tensor):
            if features.dim() != 2 or tuple(features.shape) != (n, self.feature_dim):
                raise ValueError(f"features tensor has shape {tuple(features.shape)}; expected ({n}, "
                                 f"{self.feature_dim}): one row per new item, the columns of feature_schema "
                                 f"{self.tower_config.feature_names}.")
            bad = (~torch.isfinite(features.float())).nonzero()
            if len(bad):
                row, column = bad[0].tolist()
                raise ValueError(f"features tensor row {row} (item {raw_ids[row]!r}), column {column} is "
                                 f"{features[row, column].item()}; feature values must be finite.")
            return features.float(), []
        if isinstance(features, Mapping):
            unknown = [raw for raw in features if str(raw) not in set(raw_ids)]
            if unknown:
                raise ValueError(f"features given for item id {str(unknown[0])!r}, which is not among the raw_ids "
                                 "being added.")
            per_item = [features.get(raw, features.get(int(raw)) if raw.lstrip("-").isdigit() else None)
                        for raw in raw_ids]
        else:
            per_item = list(features)
            if len(per_item) != n:
                raise ValueError(f"{len(per_item)} feature entries for {n} raw_ids; expected one per new item.")
        rows, missing = [], []
        for raw, metadata in zip(raw_ids, per_item):
            if not metadata:
                missing.append(raw)
            rows.append(encode_item_metadata(self.tower_config.feature_schema, metadata or {}, raw))
        return (torch.stack(rows) if rows else torch.zeros(0, self.feature_dim)), missing


def encode_item_metadata(schema: Sequence[Mapping[str, Any]], metadata: Mapping[str, Any], raw_id: str = "?"
                         ) -> torch.Tensor:
    """One item's (F,) feature row from `{block name: value}` under `schema` (missing blocks are zeros).

    multi_hot: a category name or a list of them (names the schema does not list are ignored: a new category has no
    column); numeric: a finite number (a bool is not one); dense: a vector of exactly the block's dim, finite. A key
    that names no block, or a value of another kind, is a `ValueError` naming the item and the value: a NaN or
    infinite value would be saved into the weights and make every later load fail as corrupted.
    """
    names = {block["name"] for block in schema}
    unknown = sorted(set(metadata) - names)
    if unknown:
        raise ValueError(f"item {raw_id!r}: unknown feature name {unknown[0]!r}; this model's feature schema has "
                         f"{sorted(names)}.")
    parts = []
    for block in schema:
        dim, value, name = int(block["dim"]), metadata.get(block["name"]), block["name"]
        part = torch.zeros(dim)
        if value is not None:
            if block["kind"] == "multi_hot":
                index = {str(c): i for i, c in enumerate(block["categories"])}
                values = [value] if isinstance(value, (str, int)) else value
                if not isinstance(values, (list, tuple)) or any(
                        isinstance(c, bool) or not isinstance(c, (str, int)) for c in values):
                    raise ValueError(f"item {raw_id!r}: feature {name!r}={value!r} is not a category name or a list "
                                     "of category names.")
                for category in values:
                    if str(category) in index:
                        part[index[str(category)]] = 1.0
            elif block["kind"] == "numeric":
                number = _finite_number(value)
                if number is None:
                    raise ValueError(f"item {raw_id!r}: feature {name!r}={value!r} is not a finite number.")
                part[0] = (number - float(block.get("mean", 0.0))) / float(block.get("std", 1.0))
            else:
                try:
                    vector = torch.as_tensor(value, dtype=torch.float32).reshape(-1)
                except (TypeError, ValueError, RuntimeError):
                    raise ValueError(f"item {raw_id!r}: feature {name!r}={value!r} is not a vector of numbers.") \
                        from None
                if vector.numel() != dim:
                    raise ValueError(f"item {raw_id!r}: feature {name!r} has dimension {vector.numel()}; "
                                     f"the schema expects {dim}.")
                if not bool(torch.isfinite(vector).all()):
                    raise ValueError(f"item {raw_id!r}: feature {name!r} holds a non-finite value "
                                     f"({vector[~torch.isfinite(vector)][0].item()}); values must be finite.")
                part = vector
        parts.append(part)
    return torch.cat(parts) if parts else torch.zeros(0)


def _finite_number(value: Any) -> float | None:
    """`value` as a finite float (a number, or text of one), else None: bools, NaN, ±inf and 1e400 are not."""
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def add_items(model: nn.Module, raw_ids: Sequence[str | int], features: Any = None, *, vocab: Any = None
              ) -> list[int]:
    """Append items to `model`'s catalog without retraining; returns their new indices.

    The ID tables (input and output, tied or not, projected or not), the sampler's log q, `config.vocab_size`, the
    feature rows and the known mask grow together; new items are not known, so they are scored from their features
    alone (`v = ψ(OOV, z)`). `features`: per-item metadata `{raw_id: {feature name: value}}` (or a list aligned with
    `raw_ids`), or an (n, F) tensor of encoded rows; items without metadata get zero features (OOV + zero
    semantics) and are counted in a log line. `vocab` (an `ItemVocab` or anything with `raw_ids` and `add`) is
    checked for duplicates and extended in place.
    """
    raw_ids = [str(raw) for raw in raw_ids]
    if not raw_ids:
        raise ValueError("add_items needs at least one raw item id.")
    seen: set[str] = set()
    for raw in raw_ids:
        if raw in seen:
            raise ValueError(f"duplicate raw item id {raw!r} in the items to add.")
        seen.add(raw)
    if vocab is not None:
        existing = set(vocab.raw_ids)
        clash = next((raw for raw in raw_ids if raw in existing), None)
        if clash is not None:
            raise ValueError(f"raw item id {clash!r} is already in the catalog (index {vocab.encode(clash)}); "
                             "add_items only adds new items.")
        if len(vocab) != model.config.vocab_size:
            raise ValueError(f"the vocabulary has {len(vocab)} entries but the model has vocab_size="
                             f"{model.config.vocab_size}; they belong to different models.")
    tower = model.item_tower
    if tower is None:
        raise ValueError("add_items needs a model with an item tower (config.item_tower_config): without features, "
                         "a new item has nothing to be scored from.")
    if features is None:
        rows, missing = torch.zeros(len(raw_ids), tower.feature_dim), list(raw_ids)
    else:
        rows, missing = tower.encode_features(features, raw_ids)
    if missing:
        logger.warning("add_items: %d of %d new items have no metadata (OOV + zero features): %s", len(missing),
                       len(raw_ids), ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else ""))
    old = model.config.vocab_size
    model.resize_token_embeddings(old + len(raw_ids), mean_resizing=False)
    tower = model.item_tower  # the same module, buffers grown
    if tower.item_features is not None:
        with torch.no_grad():
            tower.item_features[old:] = rows.to(tower.item_features)
    if vocab is not None:
        vocab.add(raw_ids)
    return list(range(old, old + len(raw_ids)))
