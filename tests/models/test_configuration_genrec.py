from __future__ import annotations

import pytest

from genrec_hf import PRESET_NOMINAL_SIZES, SIZE_PRESETS, GenRecConfig, count_backbone_parameters


def test_config_round_trip(tmp_path):
    config = GenRecConfig.from_preset("genrec-2m", vocab_size=123, head_projection_ratio=8, tie_word_embeddings=False)
    config.save_pretrained(tmp_path)
    loaded = GenRecConfig.from_pretrained(tmp_path)
    assert loaded.to_dict() == config.to_dict()
    assert loaded.head_output_size == 32


@pytest.mark.parametrize("name", sorted(PRESET_NOMINAL_SIZES))
def test_preset_size_matches_name(name):
    # Counted on the meta device: genrec-1b costs nothing.
    n = count_backbone_parameters(GenRecConfig.from_preset(name, vocab_size=10))
    assert abs(n - PRESET_NOMINAL_SIZES[name]) <= 0.10 * PRESET_NOMINAL_SIZES[name], (name, n)


def test_backbone_count_excludes_embeddings_and_head():
    small = count_backbone_parameters(GenRecConfig.from_preset("genrec-2m", vocab_size=10))
    big_catalog = count_backbone_parameters(GenRecConfig.from_preset("genrec-2m", vocab_size=100_000))
    assert small == big_catalog


def test_sasrec_preset_is_classic_shape():
    config = GenRecConfig.from_preset("sasrec", vocab_size=10)
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (64, 2, 1)
    assert config.position_encoding == "learned"
    assert "sasrec" in SIZE_PRESETS


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        (dict(hidden_size=30, num_attention_heads=4), "hidden_size"),
        (dict(hidden_size=0), "hidden_size"),
        (dict(num_hidden_layers=-1), "num_hidden_layers"),
        (dict(vocab_size=1), "vocab_size"),
        (dict(position_encoding="alibi"), "position_encoding"),
        (dict(norm_type="batchnorm"), "norm_type"),
        (dict(loss_type="bpr"), "loss_type"),
        (dict(head_projection_ratio=3, tie_word_embeddings=False), "head_projection_ratio"),
        (dict(head_projection_ratio=8, tie_word_embeddings=True), "tie_word_embeddings"),
        (dict(hidden_dropout_prob=1.5), "hidden_dropout_prob"),
        (dict(num_time_buckets=2), "num_time_buckets"),
        (dict(negatives_fraction=0.0), "negatives_fraction"),
        (dict(score_temperature=0.0), "score_temperature"),
    ],
)
def test_invalid_config_names_field(overrides, field):
    with pytest.raises(ValueError, match=rf"GenRecConfig\.{field}="):
        GenRecConfig(**{"hidden_size": 64, "num_attention_heads": 2, **overrides})


def test_unknown_preset():
    with pytest.raises(ValueError, match="Unknown preset 'genrec-3m'"):
        GenRecConfig.from_preset("genrec-3m")


def test_resolved_num_negatives():
    config = GenRecConfig(vocab_size=1_000_001, loss_type="sampled")
    assert config.resolved_num_negatives == 10_000  # 1% of the catalog
    assert GenRecConfig(vocab_size=1001).resolved_num_negatives == 128  # clamped to min_negatives
    assert GenRecConfig(vocab_size=51).resolved_num_negatives == 50  # never more than the catalog
    assert GenRecConfig(vocab_size=1001, num_negatives=7).resolved_num_negatives == 7
