"""Loss normalisation under gradient accumulation (docs/method.md): accumulating 4 micro-batches of uneven
length must give the same update as one batch of the same rows."""

from __future__ import annotations

import torch

from tests.helpers import train_one_step


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


def test_grad_accumulation_matches_full_batch(tmp_path):
    full_model = train_one_step(tmp_path / "full", _rows(), _collate, batch_size=8, accumulation=1)
    accum_model = train_one_step(tmp_path / "accum", _rows(), _collate, batch_size=2, accumulation=4)
    for (name, a), (_, b) in zip(full_model.named_parameters(), accum_model.named_parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
