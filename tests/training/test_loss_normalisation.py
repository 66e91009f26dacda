"""Loss normalisation under gradient accumulation (DESIGN.md §4.1): accumulating 4 micro-batches of uneven
length must give the same update as one batch of the same rows."""

from __future__ import annotations

import torch
from datasets import Dataset
from transformers import Trainer, TrainingArguments

from genrec_hf import GenRecForNextItemPrediction

from tests.helpers import tiny_config


def _rows():
    g = torch.Generator().manual_seed(0)
    rows = []
    for length in [3, 9, 5, 12, 2, 7, 11, 4]:  # uneven: per-micro-batch means would weight positions unequally
        items = torch.randint(1, 41, (length + 1,), generator=g).tolist()
        rows.append({"items": items})
    return rows


def _collate(rows):
    width = max(len(r["items"]) - 1 for r in rows)
    input_ids = torch.zeros(len(rows), width, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r["items"]) - 1
        input_ids[i, width - n:] = torch.tensor(r["items"][:-1])
        labels[i, width - n:] = torch.tensor(r["items"][1:])
    return {"input_ids": input_ids, "attention_mask": (input_ids != 0).long(), "labels": labels}


def _train(tmp_path, batch_size, accumulation):
    torch.manual_seed(0)
    model = GenRecForNextItemPrediction(tiny_config())
    args = TrainingArguments(
        output_dir=str(tmp_path / f"run{accumulation}"), per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=accumulation, max_steps=1, learning_rate=0.1, optim="sgd",
        lr_scheduler_type="constant", report_to=[], use_cpu=True, save_strategy="no",
        remove_unused_columns=False, logging_steps=1, seed=0, data_seed=0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=Dataset.from_list(_rows()), data_collator=_collate)
    trainer._get_train_sampler = lambda *a, **k: torch.utils.data.SequentialSampler(trainer.train_dataset)
    # Our labels are already aligned (no shift): every non -100 label must count in num_items_in_batch.
    assert trainer.model_accepts_loss_kwargs and not trainer._loss_shifts_labels
    initial = GenRecForNextItemPrediction(tiny_config())
    initial.load_state_dict(model.state_dict())
    batch = _collate(_rows())
    expected = initial(**batch).loss.item()  # mean over all supervised positions of the 8 rows
    result = trainer.train()
    assert abs(result.training_loss - expected) < 1e-5, (result.training_loss, expected)
    return model, result.training_loss


def test_grad_accumulation_matches_full_batch(tmp_path):
    full_model, full_loss = _train(tmp_path, batch_size=8, accumulation=1)
    accum_model, accum_loss = _train(tmp_path, batch_size=2, accumulation=4)
    assert abs(full_loss - accum_loss) < 1e-5, (full_loss, accum_loss)
    for (name, a), (_, b) in zip(full_model.named_parameters(), accum_model.named_parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
