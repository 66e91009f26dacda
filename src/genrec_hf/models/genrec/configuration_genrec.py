"""Configuration of the GenRec next-event transformer and its named size ladder.

This module must stay importable on its own (only `transformers` and the standard library): it is copied next to
saved checkpoints so that `AutoModel.from_pretrained(dir, trust_remote_code=True)` works without `genrec_hf`.
"""

from __future__ import annotations

import math
from typing import Any

from transformers import PretrainedConfig
from transformers.configuration_utils import SubConfigSpec

from .configuration_item_tower import GenRecItemTowerConfig

POSITION_ENCODINGS = ("rope", "learned", "none")
NORM_TYPES = ("rmsnorm", "layernorm")
MLP_TYPES = ("gated", "mlp")
HIDDEN_ACTS = ("silu", "gelu", "relu")
LOSS_TYPES = ("full", "sampled")
NEGATIVE_SHARING = ("batch", "position")
NEGATIVE_SAMPLERS = ("uniform", "popularity")
# Training-only fields that configs saved before genrec_hf 0.2 carried (the objective is a recipe section now):
# dropped when such a config is loaded, so old checkpoints still load and re-save without them.
LEGACY_TRAINING_FIELDS = ("objective", "mtp_num_targets", "mtp_horizon_seconds", "mtp_half_life_seconds",
                          "mtp_reward_column", "mtp_min_reward", "mtp_weight_normalization")

# Named size ladder. The number in each name is the count of *backbone* parameters (transformer blocks + final norm),
# excluding the event embedding and the decoding head, as in the paper. A test checks each is within
# ±10% of its name. Shapes follow the usual depth/width balance of small decoder LMs (head dim 64–128).
SIZE_PRESETS: dict[str, dict[str, Any]] = {
    # The bottom rungs (d=32, head dim 16) exist so that a CPU ladder spans two orders of magnitude below genrec-2m.
    "genrec-10k": dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64),
    "genrec-25k": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=88),
    "genrec-50k": dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=88),
    "genrec-100k": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=160),
    "genrec-500k": dict(hidden_size=128, num_hidden_layers=3, num_attention_heads=2, intermediate_size=256),
    "genrec-2m": dict(hidden_size=256, num_hidden_layers=3, num_attention_heads=4, intermediate_size=512),
    "genrec-8m": dict(hidden_size=384, num_hidden_layers=4, num_attention_heads=6, intermediate_size=1152),
    "genrec-30m": dict(hidden_size=640, num_hidden_layers=6, num_attention_heads=10, intermediate_size=1728),
    "genrec-100m": dict(hidden_size=1024, num_hidden_layers=8, num_attention_heads=16, intermediate_size=2816),
    "genrec-300m": dict(hidden_size=1536, num_hidden_layers=11, num_attention_heads=12, intermediate_size=3840),
    "genrec-1b": dict(hidden_size=2048, num_hidden_layers=20, num_attention_heads=16, intermediate_size=5504),
    # The classic SASRec shape (Kang & McAuley 2018: 2 blocks, 1 head, learned positions, ReLU MLP as wide as the
    # model) at d=64, the width of the reference SASRec, run through the same code: every benchmark's baseline.
    "sasrec": dict(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=1,
        intermediate_size=64,
        mlp_type="mlp",
        hidden_act="relu",
        norm_type="layernorm",
        position_encoding="learned",
        max_position_embeddings=200,
        num_time_buckets=0,
        num_action_types=0,
        hidden_dropout_prob=0.2,
        attention_dropout=0.2,
    ),
}

# Parameters each preset's number promises (used by the ±10% size test and the scaling ladder).
PRESET_NOMINAL_SIZES: dict[str, int] = {
    "genrec-10k": 10_000,
    "genrec-25k": 25_000,
    "genrec-50k": 50_000,
    "genrec-100k": 100_000,
    "genrec-500k": 500_000,
    "genrec-2m": 2_000_000,
    "genrec-8m": 8_000_000,
    "genrec-30m": 30_000_000,
    "genrec-100m": 100_000_000,
    "genrec-300m": 300_000_000,
    "genrec-1b": 1_000_000_000,
}


def _check(condition: bool, field: str, value: Any, expected: str) -> None:
    if not condition:
        raise ValueError(f"GenRecConfig.{field}={value!r} is invalid: expected {expected}.")


class GenRecConfig(PretrainedConfig):
    r"""Configuration of a GenRec backbone and its decoding head.

    One token per event: the item embedding, the action-type embedding, the time-gap bucket embedding (log-spaced
    buckets of seconds since the user's previous event) and the position encoding are summed into one vector, then
    fed to a stack of pre-norm causal decoder blocks.

    Args:
        vocab_size: Number of item indices, including index 0 = padding (so a catalog of V items has `vocab_size=V+1`).
        hidden_size: Width `d` of the event tokens and the transformer blocks.
        num_hidden_layers: Number of decoder blocks.
        num_attention_heads: Attention heads per block; must divide `hidden_size`.
        intermediate_size: Inner width of the feed-forward block.
        max_position_embeddings: Longest history (in events) the model reads; longer histories keep the most recent.
        hidden_dropout_prob: Dropout on the event embedding and on each residual branch.
        attention_dropout: Dropout on the attention probabilities.
        norm_type: `"rmsnorm"` or `"layernorm"`.
        norm_eps: Epsilon of the normalisation layers.
        hidden_act: Activation of the feed-forward block (`"silu"`, `"gelu"`, `"relu"`).
        mlp_type: `"gated"` (SwiGLU-style, `gate_proj`/`up_proj`/`down_proj`) or `"mlp"` (`up_proj`/`down_proj`).
        position_encoding: `"rope"` (rotary, relative), `"learned"` (absolute learned table) or `"none"`.
        rope_theta: Base of the rotary frequencies.
        num_action_types: Number of action types (0 disables the action embedding). Id 0 is "unknown/padding".
        num_time_buckets: Number of time-gap buckets (0 disables). Bucket 0 = no previous event; buckets 1.. are
            log-spaced from 1 second to `time_gap_max_seconds`.
        time_gap_max_seconds: Largest gap with a bucket of its own; longer gaps share the last bucket.
        initializer_range: Standard deviation of the normal weight initialisation.
        tie_word_embeddings: Score items with the input item embedding table (needs `head_projection_ratio` of 1 or
            no projection, so that the head and the input live in the same width).
        head_projection_ratio: `None` scores items directly with the last hidden state; an integer `r` puts
            `act → Linear(d, d // r)` before the item dot product, and item output vectors have width `d // r`
            (the paper's projected decoding head uses r = 8).
        head_act: Activation before the head projection.
        loss_type: `"full"` (softmax over the whole catalog) or `"sampled"` (sampled softmax).
        num_negatives: Number of sampled negatives; if `None`, `negatives_fraction` of the catalog is used.
        negatives_fraction: Fraction of the catalog sampled as negatives when `num_negatives` is `None` (paper: 1%).
        min_negatives, max_negatives: Clamp on the number of negatives derived from `negatives_fraction`.
        negative_sampler: `"uniform"` (every item equally likely, the paper's setting) or `"popularity"`
            (q(item) ∝ (training count + 1) ** `sampler_alpha`: negatives concentrate on the popular items that
            full-catalog ranking must push down). Counts come from `set_item_frequencies`, which
            `genrec-hf train` calls with the training split; until then the popularity sampler is uniform.
        sampler_alpha: Exponent on the counts of the popularity sampler (1 = proportional, 0 = uniform).
        negative_sharing: `"batch"` (one negative set for every position of the batch: memory O(K·d), the setting
            for huge catalogs) or `"position"` (each position draws its own: memory O(N·K·d) for N positions, but
            N times the negative draws per step, which is what sampled-softmax quality depends on when an epoch is
            only a few steps; measured in benchmarks/RESULTS.md §3).
        in_batch_negatives: Also use the other positives of the batch as negatives.
        logq_correction: Subtract log q(item) from every candidate's logit (Yi et al. 2019), which keeps the
            sampled softmax an estimate of the full one under a non-uniform sampler. `None` = on exactly when
            `negative_sampler="popularity"`.
        remove_accidental_hits: Mask a sampled negative that equals the position's positive.
        score_temperature: Scores (logits) are divided by this temperature (HSTU uses 0.05 with L2-normalised
            scores). Named so to stay clear of `temperature`, which transformers reserves for generation.
        l2_normalize_scores: L2-normalise user and item vectors before the dot product (cosine scores, HSTU setting).
        score_chunk_size: Items scored per chunk in full-catalog loss, ranking and top-k (bounds memory).
        use_cache: Whether a forward returns its incremental state (`GenRecCache`, output field `cache`) by default;
            off, as training never reuses it. Serving asks for it per call (`use_cache=True`).
        item_tower_config: Optional `GenRecItemTowerConfig` (or its dict): the cold-start semantic item tower, fusion
            and collaborative-embedding masking (`item_tower.py`). None = ID embeddings only.

    The training objective (next-token or multi-token prediction) is not a model field: it changes only the
    training targets, never the head or serving, so it lives in the training recipe (`objective:` section).
    """

    model_type = "genrec"
    _auto_class = "AutoConfig"  # what `register_for_auto_class()` sets: save_pretrained writes auto_map + the code
    sub_configs_defaults = {"item_tower_config": SubConfigSpec(config_class=GenRecItemTowerConfig, optional=True)}

    def __init__(
        self,
        vocab_size: int = 1001,
        hidden_size: int = 64,
        num_hidden_layers: int = 2,
        num_attention_heads: int = 2,
        intermediate_size: int = 160,
        max_position_embeddings: int = 200,
        hidden_dropout_prob: float = 0.1,
        attention_dropout: float = 0.1,
        norm_type: str = "rmsnorm",
        norm_eps: float = 1e-6,
        hidden_act: str = "silu",
        mlp_type: str = "gated",
        position_encoding: str = "rope",
        rope_theta: float = 10000.0,
        num_action_types: int = 0,
        num_time_buckets: int = 32,
        time_gap_max_seconds: int = 365 * 24 * 3600,
        initializer_range: float = 0.02,
        tie_word_embeddings: bool = True,
        head_projection_ratio: int | None = None,
        head_act: str = "silu",
        loss_type: str = "full",
        num_negatives: int | None = None,
        negatives_fraction: float = 0.01,
        min_negatives: int = 128,
        max_negatives: int = 65536,
        negative_sampler: str = "uniform",
        sampler_alpha: float = 1.0,
        negative_sharing: str = "batch",
        in_batch_negatives: bool = False,
        logq_correction: bool | None = None,
        remove_accidental_hits: bool = True,
        score_temperature: float = 1.0,
        l2_normalize_scores: bool = False,
        score_chunk_size: int = 65536,
        use_cache: bool = False,
        pad_token_id: int = 0,
        item_tower_config: GenRecItemTowerConfig | dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if isinstance(item_tower_config, dict):
            item_tower_config = GenRecItemTowerConfig(**item_tower_config)
        self.item_tower_config = item_tower_config
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.max_position_embeddings = max_position_embeddings
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_dropout = attention_dropout
        self.norm_type = norm_type
        self.norm_eps = norm_eps
        self.hidden_act = hidden_act
        self.mlp_type = mlp_type
        self.position_encoding = position_encoding
        self.rope_theta = rope_theta
        self.num_action_types = num_action_types
        self.num_time_buckets = num_time_buckets
        self.time_gap_max_seconds = time_gap_max_seconds
        self.initializer_range = initializer_range
        self.head_projection_ratio = head_projection_ratio
        self.head_act = head_act
        self.loss_type = loss_type
        self.num_negatives = num_negatives
        self.negatives_fraction = negatives_fraction
        self.min_negatives = min_negatives
        self.max_negatives = max_negatives
        self.negative_sampler = negative_sampler
        self.sampler_alpha = sampler_alpha
        self.negative_sharing = negative_sharing
        self.in_batch_negatives = in_batch_negatives
        self.logq_correction = logq_correction
        self.remove_accidental_hits = remove_accidental_hits
        self.score_temperature = score_temperature
        self.l2_normalize_scores = l2_normalize_scores
        self.score_chunk_size = score_chunk_size
        self.use_cache = use_cache
        for legacy in LEGACY_TRAINING_FIELDS:
            kwargs.pop(legacy, None)
        kwargs.pop("tie_word_embeddings", None)
        super().__init__(pad_token_id=pad_token_id, tie_word_embeddings=tie_word_embeddings, **kwargs)
        self.tie_word_embeddings = tie_word_embeddings
        self.validate_genrec()

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.hidden_size // self.num_attention_heads

    @property
    def head_output_size(self) -> int:
        """Width of the item output vectors (the decoding head's space)."""
        if self.head_projection_ratio is None:
            return self.hidden_size
        return self.hidden_size // self.head_projection_ratio

    def validate_genrec(self) -> None:
        """Raise `ValueError` naming the field, the value and what is allowed, for any invalid combination."""
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                     "max_position_embeddings", "score_chunk_size", "min_negatives", "max_negatives"):
            value = getattr(self, name)
            _check(isinstance(value, int) and not isinstance(value, bool) and value > 0, name, value,
                   "a positive integer")
        _check(self.vocab_size >= 2, "vocab_size", self.vocab_size, "at least 2 (index 0 is padding, items are 1..V)")
        _check(self.hidden_size % self.num_attention_heads == 0, "hidden_size", self.hidden_size,
               f"a multiple of num_attention_heads={self.num_attention_heads}")
        if self.position_encoding == "rope":
            _check(self.head_dim % 2 == 0, "hidden_size", self.hidden_size,
                   "a head dimension (hidden_size / num_attention_heads) that is even, as rotary encoding needs")
        for name in ("num_action_types", "num_time_buckets"):
            value = getattr(self, name)
            _check(isinstance(value, int) and value >= 0, name, value, "an integer >= 0 (0 disables it)")
        _check(self.num_time_buckets == 0 or self.num_time_buckets >= 3, "num_time_buckets", self.num_time_buckets,
               "0 (disabled) or at least 3")
        _check(self.time_gap_max_seconds > 1, "time_gap_max_seconds", self.time_gap_max_seconds, "more than 1 second")
        for name in ("hidden_dropout_prob", "attention_dropout"):
            value = getattr(self, name)
            _check(0.0 <= value < 1.0, name, value, "a probability in [0, 1)")
        _check(self.norm_eps > 0, "norm_eps", self.norm_eps, "a positive float")
        _check(self.norm_type in NORM_TYPES, "norm_type", self.norm_type, f"one of {NORM_TYPES}")
        _check(self.mlp_type in MLP_TYPES, "mlp_type", self.mlp_type, f"one of {MLP_TYPES}")
        _check(self.hidden_act in HIDDEN_ACTS, "hidden_act", self.hidden_act, f"one of {HIDDEN_ACTS}")
        _check(self.head_act in HIDDEN_ACTS, "head_act", self.head_act, f"one of {HIDDEN_ACTS}")
        _check(self.position_encoding in POSITION_ENCODINGS, "position_encoding", self.position_encoding,
               f"one of {POSITION_ENCODINGS}")
        _check(self.loss_type in LOSS_TYPES, "loss_type", self.loss_type, f"one of {LOSS_TYPES}")
        _check(self.negative_sharing in NEGATIVE_SHARING, "negative_sharing", self.negative_sharing,
               f"one of {NEGATIVE_SHARING}")
        _check(self.negative_sampler in NEGATIVE_SAMPLERS, "negative_sampler", self.negative_sampler,
               f"one of {NEGATIVE_SAMPLERS}")
        _check(isinstance(self.sampler_alpha, (int, float)) and 0.0 <= self.sampler_alpha <= 2.0, "sampler_alpha",
               self.sampler_alpha, "a float in [0, 2]")
        _check(self.logq_correction in (None, True, False), "logq_correction", self.logq_correction,
               "None (automatic), true or false")
        if self.head_projection_ratio is not None:
            r = self.head_projection_ratio
            _check(isinstance(r, int) and r >= 1 and self.hidden_size % r == 0, "head_projection_ratio", r,
                   f"None or a positive integer dividing hidden_size={self.hidden_size}")
        if self.tie_word_embeddings:
            _check(self.head_output_size == self.hidden_size, "tie_word_embeddings", True,
                   f"False when head_projection_ratio={self.head_projection_ratio} makes the item output vectors "
                   f"{self.head_output_size}-wide while the input item embeddings are {self.hidden_size}-wide")
        if self.num_negatives is not None:
            _check(isinstance(self.num_negatives, int) and self.num_negatives > 0, "num_negatives",
                   self.num_negatives, "None (use negatives_fraction) or a positive integer")
        _check(0.0 < self.negatives_fraction <= 1.0, "negatives_fraction", self.negatives_fraction, "a float in (0, 1]")
        _check(self.min_negatives <= self.max_negatives, "min_negatives", self.min_negatives,
               f"at most max_negatives={self.max_negatives}")
        _check(self.score_temperature > 0, "score_temperature", self.score_temperature, "a positive float")
        _check(math.isfinite(self.rope_theta) and self.rope_theta > 0, "rope_theta", self.rope_theta, "a positive float")

    @property
    def uses_logq_correction(self) -> bool:
        """Whether sampled logits are corrected by log q: as set, or automatically for the popularity sampler."""
        if self.logq_correction is None:
            return self.negative_sampler == "popularity"
        return bool(self.logq_correction)

    @property
    def resolved_num_negatives(self) -> int:
        """Negatives the sampled softmax draws: `num_negatives`, or the catalog fraction clamped to [min, max]."""
        catalog = self.vocab_size - 1
        if self.num_negatives is not None:
            return min(self.num_negatives, catalog)
        n = round(self.negatives_fraction * catalog)
        return int(min(max(n, self.min_negatives), self.max_negatives, catalog))

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "GenRecConfig":
        """Build the named preset (see `SIZE_PRESETS`), with any field overridden by keyword."""
        if name not in SIZE_PRESETS:
            raise ValueError(f"Unknown preset {name!r}: expected one of {sorted(SIZE_PRESETS)}.")
        return cls(**{**SIZE_PRESETS[name], **overrides})

