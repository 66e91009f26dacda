"""Packed, grouped and padded batching through `GenRecTrainer` and the pre-training runner: the same training, the
throughput accounting (real events/s, padding fraction) in the logs and metrics.json, and the recipe knob."""

from __future__ import annotations

import json

import pytest
import torch
from datasets import Dataset
from transformers import TrainingArguments
from transformers.trainer_pt_utils import LengthGroupedSampler

from genrec_hf import GenRecForNextItemPrediction
from genrec_hf.cli import main
from genrec_hf.data import NextItemCollator
from genrec_hf.data.collators import LENGTH_COLUMN, with_lengths
from genrec_hf.data.interactions import SEQUENCE_FEATURES
from genrec_hf.training import GenRecTrainer
from genrec_hf.training.recipes import recipe_from_dict
from genrec_hf.training.throughput import ThroughputCallback

from tests.data.test_packing import event_rows
from tests.helpers import REPO_ROOT, tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")

MAX_LENGTH = 12
LENGTHS = [1, 2, 13, 3, 1, 5, 20, 0, 2, 7, 1, 4, 9, 1, 3, 2, 6, 1, 15, 2, 1, 8, 3, 1]


def _windows() -> Dataset:
    return Dataset.from_list(event_rows(LENGTHS, seed=3), features=SEQUENCE_FEATURES)


def _trainer(tmp_path, name: str, collator, dataset: Dataset, **extra) -> GenRecTrainer:
    torch.manual_seed(0)
    model = GenRecForNextItemPrediction(tiny_config())  # dropout 0: packed and padded steps are comparable
    args = TrainingArguments(
        output_dir=str(tmp_path / name), per_device_train_batch_size=8, gradient_accumulation_steps=2, max_steps=3,
        learning_rate=0.05, optim="sgd", lr_scheduler_type="constant", report_to=[], use_cpu=True,
        save_strategy="no", eval_strategy="no", remove_unused_columns=False, logging_steps=1, seed=0, data_seed=0,
        disable_tqdm=True, **extra)
    return GenRecTrainer(model=model, args=args, train_dataset=dataset, data_collator=collator,
                         eval_collator=NextItemCollator(MAX_LENGTH, mode="eval"))


def test_packed_training_equals_padded_training(tmp_path):
    """Catches packing that changes what an optimiser step sees (other users per step, another
    `num_items_in_batch` under gradient accumulation, a leak between packed users): three SGD steps on packed
    batches must end at the weights of three steps on the padded batches of the same rows. Also catches the
    throughput accounting missing from the training logs or not seeing the padding packing removes."""
    runs = {}
    for packing in (False, True):
        trainer = _trainer(tmp_path, f"packed{packing}", NextItemCollator(MAX_LENGTH, packing=packing), _windows())
        result = trainer.train()
        runs[packing] = (trainer, result)
    (padded, padded_result), (packed, packed_result) = runs[False], runs[True]
    assert padded_result.training_loss == pytest.approx(packed_result.training_loss, rel=1e-5)
    for (name, a), b in zip(padded.model.named_parameters(), packed.model.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=name)

    def step_logs(trainer):
        return [e for e in trainer.state.log_history if "loss" in e]

    for a, b in zip(step_logs(padded), step_logs(packed)):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert b["real_events_per_s"] > 0 and 0 <= b["padding_fraction"] < a["padding_fraction"]
    assert len(step_logs(packed)) == 3
    assert packed_result.metrics["train_padding_fraction"] < padded_result.metrics["train_padding_fraction"]
    assert packed_result.metrics["train_real_events_per_s"] > 0


def test_throughput_counts_real_and_padded_positions():
    """Catches the padding fraction counted over the wrong positions or the counts not reset between logs."""
    meter = ThroughputCallback()
    meter.record({"attention_mask": torch.tensor([[0, 1, 1], [1, 1, 1]])})
    meter.record({"attention_mask": torch.tensor([[0, 0, 1, 1]])})
    meter._seconds = 2.0
    entries = meter.log_entries()
    assert entries == {"real_events_per_s": 3.5, "padding_fraction": pytest.approx(3 / 10)}
    meter.record({"attention_mask": torch.tensor([[1, 1]])})
    meter._seconds = 1.0
    assert meter.log_entries() == {"real_events_per_s": 2.0, "padding_fraction": 0.0}
    assert meter.log_entries(final=True) == {"train_real_events_per_s": 3.0,
                                             "train_padding_fraction": pytest.approx(3 / 12)}


def test_grouped_batching_uses_the_length_column(tmp_path):
    """Catches `train_sampling_strategy="group_by_length"` not finding the windows' length column (Trainer would
    then look for an `input_ids` column, which event rows do not have, and fail) or grouping by another length."""
    dataset = with_lengths(_windows(), MAX_LENGTH)
    trainer = _trainer(tmp_path, "grouped", NextItemCollator(MAX_LENGTH), dataset,
                       train_sampling_strategy="group_by_length", length_column_name=LENGTH_COLUMN)
    sampler = trainer._get_train_sampler()
    assert isinstance(sampler, LengthGroupedSampler)
    assert list(sampler.lengths) == [min(n, MAX_LENGTH) for n in LENGTHS]
    result = trainer.train()
    assert result.metrics["train_padding_fraction"] < 0.5


def test_recipe_batching_knob():
    """Catches an unknown batching mode accepted, `grouped` not switching Trainer to the length-grouped sampler, or
    a recipe setting that sampler itself twice."""
    recipe = recipe_from_dict({"data": {"batching": "grouped"}})
    args = recipe.training_arguments()
    assert args.train_sampling_strategy == "group_by_length" and args.length_column_name == LENGTH_COLUMN
    assert recipe_from_dict({"data": {"batching": "packed"}}).training_arguments().train_sampling_strategy == "random"
    assert recipe_from_dict({}).data.batching == "padded"
    with pytest.raises(ValueError, match="data.batching='stacked'"):
        recipe_from_dict({"data": {"batching": "stacked"}})
    with pytest.raises(ValueError, match="set by data.batching: grouped"):
        recipe_from_dict({"data": {"batching": "grouped"}, "training": {"train_sampling_strategy": "random"}})


@pytest.mark.parametrize("batching", ["packed", "grouped"])
def test_pretrain_writes_throughput_into_metrics(tmp_path, batching):
    """Catches the recipe knob not reaching the collator / sampler, or the run's real events/s and padding
    fraction missing from metrics.json `train`."""
    out = tmp_path / batching
    code = main(["train", str(REPO_ROOT / "recipes/pretrain/genrec-100k.yaml"), "--output_dir", str(out),
                 "--data.source", "synthetic:num_users=60,num_items=40,num_clusters=3", "--data.batching", batching,
                 "--training.num_train_epochs", "1", "--training.disable_tqdm", "true",
                 "--training.per_device_train_batch_size", "16",
                 "--model.overrides", "{hidden_size: 16, intermediate_size: 32, num_attention_heads: 2}",
                 "--data.max_length", "20", "--evaluation.num_examples", "0"])
    assert code == 0
    train = json.loads((out / "metrics.json").read_text())["train"]
    assert train["batching"] == batching
    assert train["real_events_per_s"] > 0 and 0 <= train["padding_fraction"] < 1
    if batching == "packed":
        assert train["padding_fraction"] < 0.1
