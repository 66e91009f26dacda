"""GenRec: a decoder-only next-event transformer over user event histories.

Leaf modules first, then the pre-trained base class, the backbone (`GenRecModel`) and the task head
(`GenRecForNextItemPrediction`). Only `torch`, `transformers` and this package's torch-only modules are imported, so the
file is copied next to saved checkpoints and loads with `trust_remote_code=True` where `genrec_hf` is not installed.

Input conventions (one token per event, all tensors batch × time):
    input_ids       item indices, 0 = padding (left or right padding both work)
    attention_mask  1 for real events, 0 for padding (derived from `input_ids != 0` when omitted)
    timestamps      event times in seconds (int64); used for the time-gap bucket feature
    action_ids      action type per event (0 = unknown), when `config.num_action_types > 0`
    labels          already aligned targets: `labels[:, t]` is the item to predict from events ≤ t; -100 = ignore
    mtp_labels      optional (B, T, K) multi-token targets of each position (0 = empty slot), with `mtp_weights`
                    (B, T, K): the loss is then the weighted multi-target one over the positions `labels` supervises
                    (`genrec_hf.data.mtp.MultiTokenTargets` builds both, with `labels` = each position's first target)
    position_ids    optional, for packed rows (several histories in one row, as `NextItemCollator(packing=True)`
                    builds them): each history's positions 0, 1, ..., restarting at 0 where the next one starts (the
                    `transformers.DataCollatorWithFlattening` convention). Attention then never crosses histories
                    and each history's first event has no time gap; without it a row is one history.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import ModelOutput, logging

from .configuration_genrec import GenRecConfig
from .item_tower import GenRecItemTower, add_items
from .losses import (full_softmax_loss, full_softmax_multi_target_loss, item_log_probabilities, sample_negatives,
                     sampled_softmax_loss, sampled_softmax_multi_target_loss)
from .scoring import TopItems, chunked_topk, history_exclusions, score_items

logger = logging.get_logger(__name__)

PIPELINE_TASK = "next-item-recommendation"
PIPELINE_FILE = "pipeline_genrec.py"  # not imported here: transformers.pipelines is loaded only by a pipeline

ACT2FN = {"silu": nn.SiLU, "gelu": nn.GELU, "relu": nn.ReLU}


def _make_norm(config: GenRecConfig) -> nn.Module:
    if config.norm_type == "rmsnorm":
        return GenRecRMSNorm(config.hidden_size, eps=config.norm_eps)
    return nn.LayerNorm(config.hidden_size, eps=config.norm_eps)


class GenRecRMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        dtype = hidden_states.dtype
        normed = F.rms_norm(hidden_states.float(), (hidden_states.shape[-1],), eps=self.eps)
        return self.weight * normed.to(dtype)


def time_gap_buckets(
    timestamps: torch.Tensor, attention_mask: torch.Tensor, num_buckets: int, max_seconds: float,
    segment_starts: torch.Tensor | None = None,
) -> torch.Tensor:
    """Log-spaced bucket of the seconds since the user's previous event; 0 where there is no previous event.

    Buckets 1..num_buckets-1 split [0, max_seconds] at num_buckets-2 log-spaced edges from 1 s to `max_seconds`;
    longer gaps share the last bucket, negative gaps (out-of-order logs) count as 0 s. `segment_starts` (B, T) marks
    the first event of each history of a packed row, whose previous event in the row is another user's.
    """
    # Rolled copies rather than (T - 1)-wide slices, which would specialise an exported graph's time axis.
    gaps = (timestamps - timestamps.roll(1, dims=1)).clamp(min=0)
    mask = attention_mask.bool()
    not_first = torch.arange(timestamps.shape[1], device=timestamps.device) > 0
    has_previous = mask & mask.roll(1, dims=1) & not_first
    if segment_starts is not None:
        has_previous = has_previous & ~segment_starts
    edges = torch.logspace(0.0, math.log10(max_seconds), num_buckets - 2, device=timestamps.device,
                           dtype=torch.float64)
    buckets = 1 + torch.bucketize(gaps.double(), edges)
    return torch.where(has_previous, buckets, torch.zeros_like(buckets))


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """0-based position of each event within its own history, whatever the padding side."""
    return (attention_mask.long().cumsum(dim=-1) - 1).clamp(min=0)


class GenRecEventEmbedding(nn.Module):
    """Fuses the fields of one event into one token: item + action type + time-gap bucket (+ learned position)."""

    def __init__(self, config: GenRecConfig) -> None:
        super().__init__()
        self.config = config
        self.item_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=0)
        self.action_embeddings = (
            nn.Embedding(config.num_action_types, config.hidden_size) if config.num_action_types else None
        )
        self.time_gap_embeddings = (
            nn.Embedding(config.num_time_buckets, config.hidden_size) if config.num_time_buckets else None
        )
        self.position_embeddings = (
            nn.Embedding(config.max_position_embeddings, config.hidden_size)
            if config.position_encoding == "learned" else None
        )
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        tower = config.item_tower_config
        # Cold start: fused ID/OOV + semantic item vectors (item_tower.py); the head's side reads the same module.
        self.item_tower = None if tower is None else GenRecItemTower(
            tower, config.vocab_size, config.hidden_size, config.head_output_size,
            shared=config.tie_word_embeddings and config.head_output_size == config.hidden_size,
            initializer_range=config.initializer_range)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        positions: torch.Tensor,
        timestamps: torch.Tensor | None = None,
        action_ids: torch.Tensor | None = None,
        segment_starts: torch.Tensor | None = None,
    ) -> torch.Tensor:
        hidden = self.item_embeddings(input_ids)
        if self.item_tower is not None:
            hidden = self.item_tower.input_vectors(input_ids, hidden)
        if self.action_embeddings is not None and action_ids is not None:
            hidden = hidden + self.action_embeddings(action_ids)
        if self.time_gap_embeddings is not None and timestamps is not None:
            buckets = time_gap_buckets(timestamps, attention_mask, self.config.num_time_buckets,
                                       self.config.time_gap_max_seconds, segment_starts)
            hidden = hidden + self.time_gap_embeddings(buckets)
        if self.position_embeddings is not None:
            hidden = hidden + self.position_embeddings(positions)
        hidden = hidden * attention_mask.unsqueeze(-1).to(hidden.dtype)
        return self.dropout(hidden)


class GenRecRotaryEmbedding(nn.Module):
    """Rotary position encoding computed from per-event positions (no persistent buffers to load)."""

    def __init__(self, config: GenRecConfig) -> None:
        super().__init__()
        self.head_dim = config.head_dim
        self.theta = config.rope_theta

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        inv_freq = 1.0 / (self.theta ** (torch.arange(0, self.head_dim, 2, device=positions.device).float()
                                         / self.head_dim))
        freqs = positions.float().unsqueeze(-1) * inv_freq  # (B, T, head_dim/2)
        angles = torch.cat([freqs, freqs], dim=-1).unsqueeze(1)  # (B, 1, T, head_dim)
        return angles.cos().to(dtype), angles.sin().to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor,
    scaling: float,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention written out (softmax in float32): the (B, T, H, head_dim) output and (B, H, T, T) probabilities.

    Same signature and output layout as the transformers attention interface (`ALL_ATTENTION_FUNCTIONS`), whose
    "sdpa" entry is the fused path. `attention_mask` is boolean (B, 1, T, T), True where a query may attend.
    """
    scores = torch.matmul(query, key.transpose(-1, -2)) * scaling
    scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
    weights = F.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = F.dropout(weights, p=dropout, training=module.training)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


class GenRecCache:
    """Incremental state of a batch of histories: each layer's keys and values for the events read so far, plus what
    the next event needs from the past (its position and the time since its predecessor).

    Passed to and returned by the models' `forward` as `cache` (with `use_cache=True`, or `config.use_cache`), the
    transformers >= 5.24 name; `past_key_values=` is accepted as the older one. A forward over new events with a
    cache attends to the cached events and appends the new ones: its outputs equal those of one forward over the
    whole history (tests/models/test_cache.py), as long as the history fits in `max_position_embeddings` (past that,
    a caller rebuilds from the most recent window, as `genrec_hf.serving.state` does). GenRec's own small class
    rather than a transformers `Cache`: the next event also needs each row's event count and last timestamp, and
    the transformers Cache API has changed between 5.x releases (5.24 renamed `past_key_values` to `cache`).

    Fields, for B rows and T cached steps (padding included):
        keys, values  one (B, heads, T, head_dim) tensor per layer; keys after the rotary encoding
        mask          (B, T) bool, True for real events (a first, padded forward leaves padding slots in the cache)
        seen          (B,) real events read per row: the position of the next event
        last_timestamp  (B,) int64 time of each row's last real event; None when the events carry no timestamps
    """

    def __init__(self, num_layers: int) -> None:
        self.keys: list[torch.Tensor | None] = [None] * num_layers
        self.values: list[torch.Tensor | None] = [None] * num_layers
        self.mask: torch.Tensor | None = None
        self.seen: torch.Tensor | None = None
        self.last_timestamp: torch.Tensor | None = None

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Cached steps (padding included): 0 for an empty cache."""
        return 0 if self.mask is None else self.mask.shape[1]

    @property
    def batch_size(self) -> int:
        return 0 if self.mask is None else self.mask.shape[0]

    @property
    def nbytes(self) -> int:
        """Memory held by the cached tensors."""
        tensors = [t for t in (*self.keys, *self.values, self.mask, self.seen, self.last_timestamp) if t is not None]
        return sum(t.numel() * t.element_size() for t in tensors)

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Append one layer's new (B, heads, T_new, head_dim) keys and values; return the whole cached sequence."""
        if self.keys[layer_idx] is not None:
            key = torch.cat([self.keys[layer_idx], key], dim=2)
            value = torch.cat([self.values[layer_idx], value], dim=2)
        self.keys[layer_idx], self.values[layer_idx] = key, value
        return key, value

    def commit(self, real: torch.Tensor, timestamps: torch.Tensor | None) -> None:
        """Record the new events' (B, T_new) real-event mask and timestamps once every layer has appended."""
        steps = torch.arange(real.shape[1], device=real.device).expand_as(real)
        has_new = real.any(dim=1)
        if timestamps is not None:
            last = timestamps.gather(1, torch.where(real, steps, -1).max(dim=1, keepdim=True).values.clamp(min=0))[:, 0]
            previous = self.last_timestamp if self.last_timestamp is not None else torch.zeros_like(last)
            self.last_timestamp = torch.where(has_new, last, previous)
        count = real.long().sum(dim=1)
        self.seen = count if self.seen is None else self.seen + count
        self.mask = real if self.mask is None else torch.cat([self.mask, real], dim=1)


class GenRecAttention(nn.Module):
    """Multi-head causal self-attention, eager or SDPA as `config._attn_implementation` says.

    Attention probabilities exist only on the eager path, so a call asking for them runs eager whatever is set.
    With a `GenRecCache`, the new events' keys and values are appended to the cached ones and the queries attend
    to both (`attention_mask` then is (B, 1, T_new, T_past + T_new)).
    """

    is_causal = True

    def __init__(self, config: GenRecConfig, layer_idx: int = 0) -> None:
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.dropout = config.attention_dropout
        self.scaling = self.head_dim**-0.5
        d = config.hidden_size
        self.q_proj = nn.Linear(d, d, bias=False)
        self.k_proj = nn.Linear(d, d, bias=False)
        self.v_proj = nn.Linear(d, d, bias=False)
        self.o_proj = nn.Linear(d, d, bias=False)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor,
        rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
        output_attentions: bool = False,
        cache: GenRecCache | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch, length, _ = hidden_states.shape
        shape = (batch, length, self.num_heads, self.head_dim)
        q = self.q_proj(hidden_states).view(shape).transpose(1, 2)
        k = self.k_proj(hidden_states).view(shape).transpose(1, 2)
        v = self.v_proj(hidden_states).view(shape).transpose(1, 2)
        if rotary is not None:
            cos, sin = rotary
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        implementation = "eager" if output_attentions else self.config._attn_implementation
        attention = (eager_attention_forward if implementation == "eager"
                     else ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager_attention_forward))
        out, weights = attention(self, q, k, v, attention_mask, dropout=self.dropout if self.training else 0.0,
                                 scaling=self.scaling)
        return self.o_proj(out.reshape(batch, length, -1)), weights


class GenRecMLP(nn.Module):
    """Feed-forward block: gated (`down(act(gate(x)) * up(x))`) or classic (`down(act(up(x)))`)."""

    def __init__(self, config: GenRecConfig) -> None:
        super().__init__()
        d, i = config.hidden_size, config.intermediate_size
        gated = config.mlp_type == "gated"
        self.gate_proj = nn.Linear(d, i, bias=False) if gated else None
        self.up_proj = nn.Linear(d, i, bias=not gated)
        self.down_proj = nn.Linear(i, d, bias=not gated)
        self.act_fn = ACT2FN[config.hidden_act]()

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.gate_proj is not None:
            return self.down_proj(self.act_fn(self.gate_proj(hidden_states)) * self.up_proj(hidden_states))
        return self.down_proj(self.act_fn(self.up_proj(hidden_states)))


class GenRecDecoderLayer(GradientCheckpointingLayer):
    """Pre-norm block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: GenRecConfig, layer_idx: int = 0) -> None:
        super().__init__()
        self.input_layernorm = _make_norm(config)
        self.self_attn = GenRecAttention(config, layer_idx)
        self.post_attention_layernorm = _make_norm(config)
        self.mlp = GenRecMLP(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor,
        rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
        output_attentions: bool = False,
        cache: GenRecCache | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        attended, weights = self.self_attn(self.input_layernorm(hidden_states), attention_mask, rotary,
                                           output_attentions, cache)
        hidden_states = hidden_states + self.dropout(attended)
        return hidden_states + self.dropout(self.mlp(self.post_attention_layernorm(hidden_states))), weights


class GenRecDecodingHead(nn.Module):
    """Maps hidden states to query vectors and holds the item output vectors they are scored against.

    With `head_projection_ratio=r`, queries are `Linear(act(h))` of width d // r (the paper's projected head) and the
    item output vectors are an untied (V, d // r) table. Without it, queries are the hidden states themselves and the
    output vectors are either this head's own (V, d) table or, when `tie_word_embeddings`, the input item embeddings.
    The table is a bias-free `nn.Linear(d_out, V)` (weight (V, d_out), row i = item i), the transformers output
    embedding convention, so resizing and tying work as for a language-model head.
    """

    def __init__(self, config: GenRecConfig) -> None:
        super().__init__()
        self.config = config
        if config.head_projection_ratio is None:
            self.act = None
            self.projection = None
        else:
            self.act = ACT2FN[config.head_act]()
            self.projection = nn.Linear(config.hidden_size, config.head_output_size, bias=False)
        self.item_embeddings = nn.Linear(config.head_output_size, config.vocab_size, bias=False)
        if config.loss_type == "sampled":
            # log q(item) of the negative sampler, saved with the model; uniform until `set_item_frequencies`.
            self.register_buffer("item_log_q", item_log_probabilities(torch.zeros(config.vocab_size)))
        else:
            self.item_log_q = None

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.projection is None:
            return hidden_states
        return self.projection(self.act(hidden_states))

    @property
    def item_vectors(self) -> torch.Tensor:
        """(V, d_out) item output vectors; row 0 is padding."""
        return self.item_embeddings.weight

    def resize_item_log_q(self, num_items: int) -> None:
        """Fit the sampler's log q to a catalog of `num_items` (after `resize_token_embeddings`).

        Kept items keep their relative probabilities; added items get the probability of the rarest known item,
        which is exactly the +1-smoothed share of an unseen item whenever the catalog had one (so a uniform sampler
        stays uniform). `set_item_frequencies` with new counts replaces this estimate.
        """
        if self.item_log_q is None or num_items == self.item_log_q.shape[0]:
            return
        old = self.item_log_q
        kept = old[1:num_items]
        fill = kept.min() if kept.numel() else old.new_zeros(())
        new = torch.cat([old.new_full((1,), float("-inf")), kept,
                         fill.expand(max(0, num_items - old.shape[0]))])
        self.item_log_q = new - torch.logsumexp(new[1:], dim=0)


@dataclass
class GenRecModelOutput(BaseModelOutput):
    """`BaseModelOutput` + `cache`: the `GenRecCache` after this forward (only with `use_cache`).

    Named `cache`, not `past_key_values`: transformers 5.24's `ModelOutput` maps the old name onto `cache` (and
    `output.past_key_values` reads it there); under earlier 5.x `cache` is a plain field.
    """

    cache: GenRecCache | None = None


@dataclass
class GenRecNextItemOutput(ModelOutput):
    """Output of `GenRecForNextItemPrediction`.

    Attributes:
        loss: Next-item loss averaged over supervised positions (of the whole accumulated batch under Trainer).
        logits: (B, V) scores of every item for the next event after each history; only when `output_logits=True`.
        user_embeddings: (B, d_out) query vector of the last real event of each history, in the item output space:
            `user_embeddings @ model.item_vectors.T` are the next-item scores. For a packed row (`position_ids`
            given) it is the row's last event, so it belongs to one of its histories only: meaningless for ranking
            (evaluation batches are never packed).
        last_hidden_state: (B, T, d) backbone output.
        hidden_states: Embedding output + each layer's output, when `output_hidden_states=True`.
        attentions: Each layer's (B, heads, T, T) attention probabilities, when `output_attentions=True`.
        cache: The `GenRecCache` extended with this forward's events, when `use_cache` (see `GenRecModel.forward`).
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    user_embeddings: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None
    cache: GenRecCache | None = None


class GenRecPreTrainedModel(PreTrainedModel):
    config_class = GenRecConfig
    config: GenRecConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _no_split_modules = ["GenRecDecoderLayer"]
    _supports_sdpa = True

    def _check_inputs(self, input_ids: torch.Tensor, **others: torch.Tensor | None) -> None:
        """Raise a clear `ValueError` for out-of-range ids and mismatched shapes (not an index error in torch)."""
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be 2-D (batch, time), got shape {tuple(input_ids.shape)}.")
        for name, tensor in others.items():
            if tensor is not None and tuple(tensor.shape) != tuple(input_ids.shape):
                raise ValueError(
                    f"{name} has shape {tuple(tensor.shape)} but input_ids has shape {tuple(input_ids.shape)}; "
                    "every per-event input must be (batch, time)."
                )
        length = input_ids.shape[1]
        if length > self.config.max_position_embeddings:
            raise ValueError(
                f"History length {length} exceeds max_position_embeddings={self.config.max_position_embeddings}; "
                "keep the most recent events (the genrec_hf collators truncate this way)."
            )
        _check_range("input_ids", input_ids, 0, self.config.vocab_size)
        if others.get("action_ids") is not None and self.config.num_action_types:
            _check_range("action_ids", others["action_ids"], 0, self.config.num_action_types)

    @property
    def item_tower(self) -> GenRecItemTower | None:
        """The cold-start item tower (features, OOV vectors, fusion), or None for an ID-only model."""
        return getattr(self, "model", self).embeddings.item_tower

    def resize_token_embeddings(self, new_num_tokens: int | None = None, pad_to_multiple_of: int | None = None,
                                mean_resizing: bool = True) -> nn.Embedding:
        embeddings = super().resize_token_embeddings(new_num_tokens, pad_to_multiple_of, mean_resizing)
        if self.item_tower is not None:  # feature rows and known mask follow the catalog (new rows: not known)
            self.item_tower.resize(self.config.vocab_size)
        return embeddings

    @property
    def is_gradient_checkpointing(self) -> bool:
        """transformers' deprecated alias of `is_activation_checkpointing`, without its FutureWarning: PEFT reads it
        each time it wraps a model (every adapter load and fine-tune), a warning the user can do nothing about."""
        return any(getattr(module, "gradient_checkpointing", False) for module in self.modules())

    def save_pretrained(self, save_directory: str | os.PathLike, *args: Any, **kwargs: Any) -> None:
        """`PreTrainedModel.save_pretrained`, plus the recommendation pipeline: `config.custom_pipelines` names
        `pipeline_genrec.py`, copied beside the modeling code, so `pipeline(model=folder, trust_remote_code=True)`
        infers the `next-item-recommendation` task and runs where genrec_hf is not installed."""
        self.config.custom_pipelines = {PIPELINE_TASK: {"impl": f"{PIPELINE_FILE[:-3]}.NextItemRecommendationPipeline",
                                                        "pt": ["AutoModel"]}}
        super().save_pretrained(save_directory, *args, **kwargs)
        source = Path(__file__).with_name(PIPELINE_FILE)
        if kwargs.get("is_main_process", True) and source.is_file():  # absent in an older remote-code cache
            shutil.copyfile(source, Path(save_directory) / PIPELINE_FILE)

    def add_items(self, raw_ids: list[str], features: Any = None, *, vocab: Any = None) -> list[int]:
        """Grow the catalog by `raw_ids` without retraining (scored from `features` alone); see
        `item_tower.add_items`. Returns the new item indices."""
        return add_items(self, raw_ids, features, vocab=vocab)

    def _resolve_output_flags(
        self, output_attentions: bool | None, output_hidden_states: bool | None, return_dict: bool | None
    ) -> tuple[bool, bool, bool]:
        """Forward arguments left as None fall back to the config (`config.output_attentions`, ...)."""
        config = self.config
        return (
            config.output_attentions if output_attentions is None else output_attentions,
            config.output_hidden_states if output_hidden_states is None else output_hidden_states,
            config.return_dict if return_dict is None else return_dict,
        )


def _is_traced() -> bool:
    """Whether torch.compile / torch.export / jit tracing is capturing this call (no data-dependent branches)."""
    return torch.compiler.is_compiling() or torch.jit.is_tracing()


def _check_range(name: str, tensor: torch.Tensor, low: int, high: int, ignore: int | None = None) -> None:
    """Raise a `ValueError` naming the tensor and a bad value; skipped while traced, where reading values would put
    a data-dependent branch in the graph (eager calls, which feed every compiled or exported one in tests, check)."""
    if _is_traced():
        return
    values = tensor if ignore is None else tensor[tensor != ignore]
    if values.numel() and (values.min() < low or values.max() >= high):
        bad = values[(values < low) | (values >= high)][0].item()
        raise ValueError(f"{name} contains {bad}, outside the valid range [{low}, {high - 1}] for this model's config.")


class GenRecModel(GenRecPreTrainedModel):
    """The shared backbone: event embedding → causal decoder blocks → final norm."""

    _auto_class = "AutoModel"  # as `register_for_auto_class("AutoModel")`: auto_map + the code go with the weights

    _input_embed_layer = "item_embeddings"

    def __init__(self, config: GenRecConfig) -> None:
        super().__init__(config)
        self.embeddings = GenRecEventEmbedding(config)
        self.rotary = GenRecRotaryEmbedding(config) if config.position_encoding == "rope" else None
        self.layers = nn.ModuleList([GenRecDecoderLayer(config, i) for i in range(config.num_hidden_layers)])
        self.norm = _make_norm(config)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.item_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embeddings.item_embeddings = value

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        timestamps: torch.Tensor | None = None,
        action_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        cache: GenRecCache | None = None,
        use_cache: bool | None = None,
        **kwargs: Any,
    ) -> GenRecModelOutput | tuple:
        """`position_ids` (B, T), for packed rows: see the module docstring; None = one history per row.

        Incremental state: with `use_cache=True` (or `config.use_cache`) the output's `cache` is a `GenRecCache`
        of every event read (`past_key_values=` is taken as the older name of `cache`); passing it back with the
        next events (B, T_new), all real (no padding), runs only those events, attending to the cached ones, with
        the positions and time gaps they have in the whole history. Packed rows cannot be cached, and a cached
        history cannot outgrow `max_position_embeddings` (a `ValueError` says so: rebuild from the most recent
        window).
        """
        output_attentions, output_hidden_states, return_dict = self._resolve_output_flags(
            output_attentions, output_hidden_states, return_dict)
        self._check_inputs(input_ids, attention_mask=attention_mask, timestamps=timestamps, action_ids=action_ids,
                           position_ids=position_ids)
        if attention_mask is None:
            attention_mask = (input_ids != 0).long()
        cache = self._resolve_cache(cache if cache is not None else kwargs.pop("past_key_values", None), use_cache,
                                    position_ids)
        if cache is not None and cache.get_seq_length():
            hidden, mask, rotary = self._extend_inputs(cache, input_ids, attention_mask, timestamps, action_ids)
            return self._run_layers(hidden, mask, rotary, cache, attention_mask, timestamps, output_attentions,
                                    output_hidden_states, return_dict)
        real = attention_mask.bool()
        length = input_ids.shape[1]
        causal = torch.ones(length, length, dtype=torch.bool, device=input_ids.device).tril()
        # Queries may attend to earlier real events; a padding query attends to itself only so no row is empty.
        mask = causal & real[:, None, None, :]
        if position_ids is None:
            positions, starts = positions_from_mask(attention_mask), None
        else:
            _check_range("position_ids", position_ids, 0, self.config.max_position_embeddings)
            positions, starts = position_ids, (position_ids == 0) & real
            segments = starts.long().cumsum(dim=-1)  # history number of each event of a packed row
            mask = mask & (segments[:, None, :, None] == segments[:, None, None, :])
        mask = mask | torch.eye(length, dtype=torch.bool, device=input_ids.device)
        hidden = self.embeddings(input_ids, attention_mask, positions, timestamps, action_ids, starts)
        rotary = self.rotary(positions, hidden.dtype) if self.rotary is not None else None
        return self._run_layers(hidden, mask, rotary, cache, attention_mask, timestamps, output_attentions,
                                output_hidden_states, return_dict)

    def _run_layers(
        self, hidden: torch.Tensor, mask: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor] | None,
        cache: GenRecCache | None, attention_mask: torch.Tensor, timestamps: torch.Tensor | None,
        output_attentions: bool, output_hidden_states: bool, return_dict: bool,
    ) -> GenRecModelOutput | tuple:
        all_hidden = (hidden,) if output_hidden_states else None
        all_attentions = () if output_attentions else None
        for layer in self.layers:
            hidden, weights = layer(hidden, mask, rotary, output_attentions, cache=cache)
            if output_hidden_states:
                all_hidden += (hidden,)
            if output_attentions:
                all_attentions += (weights,)
        hidden = self.norm(hidden)
        if cache is not None:
            cache.commit(attention_mask.bool(), timestamps if self.embeddings.time_gap_embeddings is not None else None)
        output = GenRecModelOutput(last_hidden_state=hidden, hidden_states=all_hidden, attentions=all_attentions,
                                   cache=cache)
        return output if return_dict else output.to_tuple()

    def _resolve_cache(self, given: GenRecCache | None, use_cache: bool | None,
                       position_ids: torch.Tensor | None) -> GenRecCache | None:
        """The cache this forward fills: the one given, a new one for `use_cache`, or None."""
        if use_cache is None:
            use_cache = getattr(self.config, "use_cache", False)
        if not use_cache and given is None:
            return None
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            # The backward replay would append every layer's keys a second time.
            if given is not None and given.get_seq_length():
                raise ValueError("A filled cache cannot be extended under gradient checkpointing in training mode "
                                 "(the backward replay would append every layer twice); use model.eval().")
            logger.warning_once("GenRec: caching is incompatible with gradient checkpointing; use_cache=False.")
            return None
        if position_ids is not None:
            raise ValueError("Packed rows (position_ids) cannot be cached: caching reads one history per row.")
        if given is not None and not isinstance(given, GenRecCache):
            raise TypeError(f"cache must be a GenRecCache (from a previous forward with use_cache=True), got "
                            f"{type(given).__name__}.")
        return given if given is not None else GenRecCache(self.config.num_hidden_layers)

    def _extend_inputs(
        self, cache: GenRecCache, input_ids: torch.Tensor, attention_mask: torch.Tensor,
        timestamps: torch.Tensor | None, action_ids: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        """Embeddings, (B, 1, T_new, T_past + T_new) attention mask and rotary angles of events appended to `cache`."""
        batch, length = input_ids.shape
        device = input_ids.device
        if batch != cache.batch_size:
            raise ValueError(f"The cache holds {cache.batch_size} histories but input_ids has {batch} rows.")
        if not bool(attention_mask.bool().all()):
            raise ValueError("Events appended to a cache must all be real (no padding): append the same "
                             "number of events to every row, or one history at a time.")
        uses_time = self.embeddings.time_gap_embeddings is not None
        if uses_time and (timestamps is None) != (cache.last_timestamp is None):
            raise ValueError("Give timestamps both for the cached events and for the new ones, or for neither: "
                             "the first new event's time gap is measured from the last cached one.")
        positions = cache.seen[:, None] + torch.arange(length, device=device)  # (B, T_new)
        if int(positions.max()) >= self.config.max_position_embeddings:
            raise ValueError(f"The cached history outgrows max_position_embeddings="
                             f"{self.config.max_position_embeddings}: rebuild the cache from the most recent window.")
        causal = torch.ones(length, length, dtype=torch.bool, device=device).tril()
        mask = torch.cat([cache.mask[:, None, None, :].expand(batch, 1, length, -1),
                          causal.expand(batch, 1, length, length)], dim=-1)
        if uses_time and timestamps is not None:
            # The last cached event rides along as a leading column whose output is dropped, so the first new
            # event's time-gap bucket comes from the same `time_gap_buckets` as in one forward over the history.
            def lead(first: torch.Tensor, tensor: torch.Tensor) -> torch.Tensor:
                return torch.cat([first[:, None].to(tensor.dtype), tensor], dim=1)

            zeros = torch.zeros(batch, dtype=torch.long, device=device)
            hidden = self.embeddings(
                lead(zeros, input_ids), lead(cache.seen > 0, attention_mask), lead((cache.seen - 1).clamp(min=0),
                                                                                    positions),
                lead(cache.last_timestamp, timestamps), None if action_ids is None else lead(zeros, action_ids),
            )[:, 1:]
        else:
            hidden = self.embeddings(input_ids, attention_mask, positions, timestamps, action_ids)
        rotary = self.rotary(positions, hidden.dtype) if self.rotary is not None else None
        return hidden, mask, rotary


def history_inputs(histories: Sequence[Sequence[int]], max_length: int, *,
                   timestamps: Sequence[Sequence[int]] | None = None,
                   action_ids: Sequence[Sequence[int]] | None = None,
                   device: torch.device | str | None = None) -> dict[str, torch.Tensor | None]:
    """Model inputs of histories of item indices (oldest first): each history's most recent `max_length` events,
    left-padded with 0 to the longest; `timestamps` / `action_ids` (one value per event, or None) alike."""
    length = min(max(len(h) for h in histories), max_length)

    def left_pad(rows: Sequence[Sequence[int]] | None, name: str) -> torch.Tensor | None:
        if rows is None:
            return None
        if len(rows) != len(histories) or any(len(r) != len(h) for r, h in zip(rows, histories)):
            raise ValueError(f"{name} must have one value per event of each history.")
        out = torch.zeros(len(rows), length, dtype=torch.long, device=device)
        for i, row in enumerate(rows):
            row = list(row)[-length:]
            out[i, length - len(row):] = torch.as_tensor(row, dtype=torch.long)
        return out

    input_ids = left_pad(histories, "histories")
    return {"input_ids": input_ids, "attention_mask": (input_ids != 0).long(),
            "timestamps": left_pad(timestamps, "timestamps"), "action_ids": left_pad(action_ids, "action_ids")}


def last_event_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real event of each row (works for left and right padding)."""
    length = attention_mask.shape[1]
    steps = torch.arange(length, device=attention_mask.device).expand_as(attention_mask)
    return torch.where(attention_mask.bool(), steps, torch.full_like(steps, -1)).max(dim=1).values.clamp(min=0)


class GenRecForNextItemPrediction(GenRecPreTrainedModel):
    """Backbone + decoding head + next-item loss (full or sampled softmax, chosen by `config.loss_type`)."""

    _auto_class = "AutoModel"

    _tied_weights_keys = {"head.item_embeddings.weight": "model.embeddings.item_embeddings.weight"}
    # Trainer passes `num_items_in_batch` (supervised positions of the whole accumulated, gathered batch); the loss
    # is divided by it, which is exact under gradient accumulation and DDP.
    accepts_loss_kwargs = True

    def __init__(self, config: GenRecConfig) -> None:
        super().__init__(config)
        self.model = GenRecModel(config)
        self.head = GenRecDecodingHead(config)
        if config.tie_word_embeddings:
            # The tied head table is never saved; declaring it lets Trainer's best-checkpoint reload re-tie it
            # instead of warning about a "missing key" on every run.
            self._keys_to_ignore_on_save = ["head.item_embeddings.weight"]
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Linear:
        return self.head.item_embeddings

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.head.item_embeddings = value

    def resize_token_embeddings(
        self,
        new_num_tokens: int | None = None,
        pad_to_multiple_of: int | None = None,
        mean_resizing: bool = True,
    ) -> nn.Embedding:
        """Resize the catalog to `new_num_tokens` item indices (padding included), e.g. to add new items.

        Input and output tables (tied or not, projected or not) and `config.vocab_size` change together; new rows
        are drawn around the old rows' mean (`mean_resizing`), so new items score like an average item until
        trained, and the sampler's log q gets them at the rarest known item's probability (`resize_item_log_q`).
        """
        embeddings = super().resize_token_embeddings(new_num_tokens, pad_to_multiple_of, mean_resizing)
        self.head.resize_item_log_q(self.config.vocab_size)
        return embeddings

    @property
    def item_vectors(self) -> torch.Tensor:
        """(V, d_out) item output vectors that `user_embeddings` are scored against; row 0 is padding. With an item
        tower these are the fused vectors ψ(ẽ, z), recomputed on each access (masked at random in training)."""
        if self.item_tower is not None:
            return self.item_tower.output_vectors(self.head.item_vectors)
        return self.head.item_vectors

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        timestamps: torch.Tensor | None = None,
        action_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        output_logits: bool = False,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        num_items_in_batch: int | torch.Tensor | None = None,
        cache: GenRecCache | None = None,
        use_cache: bool | None = None,
        mtp_labels: torch.Tensor | None = None,
        mtp_weights: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> GenRecNextItemOutput | tuple:
        """Next-item loss (with `labels`) and user embeddings; `position_ids` (B, T) marks packed rows (several
        histories per row, see the module docstring): the loss is that of the same histories padded one per row.
        With `mtp_labels` / `mtp_weights` (B, T, K) the loss is the multi-token one (`multi_target_loss_sum`) over
        the positions `labels` supervises, divided by the same count of supervised positions."""
        output_attentions, output_hidden_states, return_dict = self._resolve_output_flags(
            output_attentions, output_hidden_states, return_dict)
        if attention_mask is None:
            attention_mask = (input_ids != 0).long()
        if labels is not None:
            self._check_inputs(input_ids, labels=labels)
            _check_range("labels", labels, 1, self.config.vocab_size, ignore=-100)
        outputs = self.model(input_ids, attention_mask=attention_mask, timestamps=timestamps, action_ids=action_ids,
                             position_ids=position_ids, output_attentions=output_attentions,
                             output_hidden_states=output_hidden_states, return_dict=True,
                             cache=cache if cache is not None else kwargs.pop("past_key_values", None),
                             use_cache=use_cache)
        hidden = outputs.last_hidden_state
        last = hidden[torch.arange(hidden.shape[0], device=hidden.device), last_event_index(attention_mask)]
        user_embeddings = self.head(last)

        loss = None
        if labels is not None:
            supervised = labels != -100
            if mtp_labels is None:
                loss_sum = self.loss_sum(self.head(hidden[supervised]), labels[supervised])
            else:
                self._check_multi_targets(labels, mtp_labels, mtp_weights)
                loss_sum = self.multi_target_loss_sum(self.head(hidden[supervised]), mtp_labels[supervised],
                                                      mtp_weights[supervised])
            denominator = num_items_in_batch if num_items_in_batch is not None else supervised.sum().clamp(min=1)
            loss = loss_sum / denominator
        logits = self.score(user_embeddings) if output_logits else None
        output = GenRecNextItemOutput(loss=loss, logits=logits, user_embeddings=user_embeddings,
                                      last_hidden_state=hidden, hidden_states=outputs.hidden_states,
                                      attentions=outputs.attentions, cache=outputs.cache)
        return output if return_dict else output.to_tuple()

    def loss_sum(self, queries: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Summed next-item loss of (N, d_out) queries against (N,) targets, as configured."""
        if self.config.loss_type == "full":
            return full_softmax_loss(queries, self.item_vectors, targets, **self._score_options())
        return sampled_softmax_loss(queries, self.item_vectors, targets, self._negatives(queries.shape[0]),
                                    **self._sampled_options())

    def multi_target_loss_sum(self, queries: torch.Tensor, targets: torch.Tensor,
                              weights: torch.Tensor) -> torch.Tensor:
        """Summed weighted multi-token loss of (N, d_out) queries against (N, K) targets (0 = empty slot) with
        (N, K) weights: `-sum w log p(y | x)` under the configured head (full or sampled softmax, same negatives)."""
        if self.config.loss_type == "full":
            return full_softmax_multi_target_loss(queries, self.item_vectors, targets, weights,
                                                  **self._score_options())
        return sampled_softmax_multi_target_loss(queries, self.item_vectors, targets, weights,
                                                 self._negatives(queries.shape[0]), **self._sampled_options())

    def _score_options(self) -> dict[str, Any]:
        return dict(temperature=self.config.score_temperature, l2_normalize=self.config.l2_normalize_scores)

    def _sampled_options(self) -> dict[str, Any]:
        config = self.config
        return dict(in_batch_negatives=config.in_batch_negatives,
                    item_log_q=self.head.item_log_q if config.uses_logq_correction else None,
                    remove_accidental_hits=config.remove_accidental_hits, **self._score_options())

    def _negatives(self, num_queries: int) -> torch.Tensor:
        """The sampled head's negatives for `num_queries` positions: shared (K,) or per position (N, K)."""
        config = self.config
        k = config.resolved_num_negatives
        shape = (k,) if config.negative_sharing == "batch" else (num_queries, k)
        return sample_negatives(config.vocab_size, shape, device=self.item_vectors.device,
                                item_log_q=self.head.item_log_q if config.negative_sampler == "popularity" else None)

    def _check_multi_targets(self, labels: torch.Tensor, mtp_labels: torch.Tensor,
                             mtp_weights: torch.Tensor | None) -> None:
        """(B, T, K) multi-token targets and weights that match `labels`, in range, weights finite and >= 0."""
        if mtp_weights is None or mtp_labels.dim() != 3 or tuple(mtp_labels.shape[:2]) != tuple(labels.shape) \
                or tuple(mtp_weights.shape) != tuple(mtp_labels.shape):
            raise ValueError(
                f"mtp_labels {tuple(mtp_labels.shape)} and mtp_weights "
                f"{None if mtp_weights is None else tuple(mtp_weights.shape)} must both be (batch, time, K) with "
                f"(batch, time) = labels' {tuple(labels.shape)}.")
        _check_range("mtp_labels", mtp_labels, 0, self.config.vocab_size)
        if not _is_traced() and mtp_weights.numel() and not bool(
                (torch.isfinite(mtp_weights) & (mtp_weights >= 0)).all()):
            raise ValueError("mtp_weights must be finite and >= 0 (w = r * exp(-ln2 * dt / beta) with a reward "
                             "r >= 0).")

    def set_item_frequencies(self, counts: torch.Tensor) -> None:
        """Give the sampled softmax the (V,) training count of each item: the popularity sampler draws from it and
        the logQ correction subtracts its log. A no-op for the full softmax, which needs no sampler."""
        if self.head.item_log_q is None:
            return
        if counts.shape != (self.config.vocab_size,):
            raise ValueError(f"item counts have shape {tuple(counts.shape)}; expected ({self.config.vocab_size},), "
                             "one count per item index of this model (index 0 = padding).")
        self.head.item_log_q.copy_(item_log_probabilities(counts, self.config.sampler_alpha))

    def score(self, user_embeddings: torch.Tensor) -> torch.Tensor:
        """(B, V) scores of every item for each user embedding; padding scores -inf. Use `topk` for big catalogs."""
        scores = score_items(user_embeddings, self.item_vectors, temperature=self.config.score_temperature,
                             l2_normalize=self.config.l2_normalize_scores).float()
        scores[:, 0] = float("-inf")
        return scores

    @torch.no_grad()
    def topk(
        self,
        user_embeddings: torch.Tensor,
        k: int = 10,
        exclude: torch.Tensor | None = None,
        allowed: torch.Tensor | None = None,
        item_vectors: torch.Tensor | None = None,
    ) -> TopItems:
        """Exact top-k `TopItems(items, scores)` per user, scored in catalog chunks of `config.score_chunk_size`.

        `item_vectors` (V, d_out) are scored in place of the model's own under the same rule (an adapter's table).
        """
        return chunked_topk(user_embeddings, self.item_vectors if item_vectors is None else item_vectors, k,
                            exclude=exclude, allowed=allowed, chunk_size=self.config.score_chunk_size,
                            temperature=self.config.score_temperature, l2_normalize=self.config.l2_normalize_scores)

    @torch.no_grad()
    def recommend(
        self,
        histories: list[list[int]],
        k: int = 10,
        *,
        timestamps: list[list[int]] | None = None,
        action_ids: list[list[int]] | None = None,
        exclude_seen: bool = True,
        allowed: torch.Tensor | None = None,
    ) -> TopItems:
        """Top-k next items for each history of item indices (most recent last).

        Histories longer than `config.max_position_embeddings` keep their most recent events; items of the whole
        history are excluded unless `exclude_seen=False`. Returns `TopItems(items, scores)`, each (B, k), best
        first. Runs in eval mode and puts the model back in the mode it was in.
        """
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k={k!r} is invalid: expected a positive integer number of items to recommend.")
        if not histories or any(len(h) == 0 for h in histories):
            raise ValueError("Every history needs at least one event to recommend from (got an empty history).")
        device = self.item_vectors.device
        inputs = history_inputs(histories, self.config.max_position_embeddings, timestamps=timestamps,
                                action_ids=action_ids, device=device)
        was_training = self.training
        try:
            outputs = self.eval()(**inputs)
        finally:
            self.train(was_training)
        exclude = history_exclusions(histories, device) if exclude_seen else None
        return self.topk(outputs.user_embeddings, k, exclude=exclude, allowed=allowed)


def count_backbone_parameters(model_or_config: nn.Module | GenRecConfig) -> int:
    """Parameters of the transformer blocks and final norm: the paper's model size (no embeddings, no head).

    A config is instantiated on the meta device, so even `genrec-1b` costs no memory.
    """
    if isinstance(model_or_config, GenRecConfig):
        with torch.device("meta"):
            model_or_config = GenRecModel(model_or_config)
    backbone = getattr(model_or_config, "model", model_or_config)
    if not isinstance(backbone, GenRecModel):
        raise TypeError(f"Expected a GenRecConfig or a GenRec model, got {type(model_or_config).__name__}.")
    blocks = sum(p.numel() for p in backbone.layers.parameters())
    return blocks + sum(p.numel() for p in backbone.norm.parameters())
