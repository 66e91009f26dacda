"""Configuration of the cold-start item tower: `GenRecConfig.item_tower_config`, a sub-config like `vision_config`.

Only `transformers` and the standard library: copied next to saved checkpoints with `configuration_genrec.py`.

The tower (modeling in `item_tower.py`) represents item i by `v_i = ψ(ẽ_i, z_i)`: `ẽ_i` its ID embedding, or a learned
OOV vector when the item has no collaborative signal; `z_i = φ_sem(x_i)` a small MLP over the item's feature row
`x_i` (the concatenation of the blocks of `feature_schema`). The same `v_i` represents the item as an input event
and as a candidate of the decoding head.
"""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig

FUSIONS = ("sum", "gate", "semantic")
FEATURE_KINDS = ("multi_hot", "numeric", "dense")


def _check(condition: bool, field: str, value: Any, expected: str) -> None:
    if not condition:
        raise ValueError(f"GenRecItemTowerConfig.{field}={value!r} is invalid: expected {expected}.")


class GenRecItemTowerConfig(PretrainedConfig):
    r"""The semantic item tower φ_sem, the fusion ψ and collaborative-embedding masking.

    Args:
        feature_schema: The blocks of an item's feature row, in order: a list of
            `{"name", "kind", "dim", ...}` with kind `"multi_hot"` (+ `"categories"`: the category names, one
            column each), `"numeric"` (dim 1, + `"mean"`, `"std"`: the column holds `(value - mean) / std`) or
            `"dense"` (a precomputed vector, e.g. a title text embedding or a knowledge-graph embedding, + an optional
            `"source"` naming what produced it). Built by `genrec_hf.data.item_features.ItemFeatureStore`.
        tower_hidden_size: Width of φ_sem's hidden layers.
        num_tower_layers: Linear layers of φ_sem (>= 1; the last maps to the model width).
        tower_dropout: Dropout inside φ_sem.
        fusion: ψ. `"sum"` (default; the paper's weighted sum): `v = a ⊙ ẽ + b ⊙ z` with learned per-dimension
            weights a, b (initialised to 1). `"gate"`: `v = g ⊙ ẽ + (1 - g) ⊙ z` with `g = sigmoid(W [ẽ; z] + c)`,
            so the model learns per item how much to trust the ID. `"semantic"`: `v = z` (ID embeddings unused: the
            semantic-only ablation).
        mask_prob: Collaborative-embedding masking. In training each input event's ID embedding, and each catalog
            row's output ID vector, is replaced by the OOV vector with this probability, so the model learns to
            score items from semantics alone. Set it to the data's cold-start rate
            (`genrec_hf.data.item_features.estimate_cold_start_rate`).
    """

    model_type = "genrec_item_tower"
    base_config_key = "item_tower_config"

    def __init__(
        self,
        feature_schema: list[dict[str, Any]] | None = None,
        tower_hidden_size: int = 128,
        num_tower_layers: int = 2,
        tower_dropout: float = 0.1,
        fusion: str = "sum",
        mask_prob: float = 0.0,
        **kwargs: Any,
    ) -> None:
        self.feature_schema = [dict(block) for block in (feature_schema or [])]
        self.tower_hidden_size = tower_hidden_size
        self.num_tower_layers = num_tower_layers
        self.tower_dropout = tower_dropout
        self.fusion = fusion
        self.mask_prob = mask_prob
        super().__init__(**kwargs)
        self.validate_item_tower()

    @property
    def feature_dim(self) -> int:
        """Width of an item's feature row: the sum of the blocks' dims (0 = no features: ID / OOV only)."""
        return sum(int(block["dim"]) for block in self.feature_schema)

    @property
    def feature_names(self) -> list[str]:
        return [block["name"] for block in self.feature_schema]

    def validate_item_tower(self) -> None:
        """Raise `ValueError` naming the field and value for an invalid tower config or feature schema."""
        _check(self.fusion in FUSIONS, "fusion", self.fusion, f"one of {FUSIONS}")
        _check(isinstance(self.mask_prob, (int, float)) and 0.0 <= self.mask_prob <= 1.0, "mask_prob",
               self.mask_prob, "a probability in [0, 1]")
        for name in ("tower_hidden_size", "num_tower_layers"):
            value = getattr(self, name)
            _check(isinstance(value, int) and not isinstance(value, bool) and value > 0, name, value,
                   "a positive integer")
        _check(0.0 <= self.tower_dropout < 1.0, "tower_dropout", self.tower_dropout, "a probability in [0, 1)")
        seen: set[str] = set()
        for block in self.feature_schema:
            name = block.get("name")
            _check(isinstance(name, str) and bool(name), "feature_schema", block, "blocks with a non-empty 'name'")
            _check(name not in seen, "feature_schema", name, "distinct block names")
            seen.add(name)
            kind, dim = block.get("kind"), block.get("dim")
            _check(kind in FEATURE_KINDS, f"feature_schema[{name}].kind", kind, f"one of {FEATURE_KINDS}")
            _check(isinstance(dim, int) and not isinstance(dim, bool) and dim > 0, f"feature_schema[{name}].dim",
                   dim, "a positive integer")
            if kind == "multi_hot":
                categories = block.get("categories")
                _check(isinstance(categories, list) and len(categories) == dim, f"feature_schema[{name}].categories",
                       categories, f"a list of {dim} category names (one per column)")
            if kind == "numeric":
                _check(dim == 1, f"feature_schema[{name}].dim", dim, "1 for a numeric feature")
                _check(float(block.get("std", 1.0)) > 0, f"feature_schema[{name}].std", block.get("std"),
                       "a positive float")
        if self.fusion == "semantic":
            _check(self.feature_dim > 0, "fusion", self.fusion, "a feature_schema with at least one block "
                   "(semantic-only fusion has nothing else to represent an item with)")
