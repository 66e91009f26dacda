"""`GenRecTrainer`: the one ranking evaluation loop, for pre-training (leave-one-out) and task protocols alike."""

from __future__ import annotations

import math
import subprocess

import pytest
import torch
from datasets import DatasetDict
from transformers import TrainingArguments

from genrec_hf import GenRecForNextItemPrediction
from genrec_hf.data import NextItemCollator, leave_one_out, load_interactions, sliding_windows
from genrec_hf.data.collators import TaskCollator
from genrec_hf.data.tasks import build_task
from genrec_hf.evaluation import evaluate_model
from genrec_hf.training import GenRecTrainer

from tests.helpers import REPO_ROOT, tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")

SOURCE = "synthetic:num_users=60,num_items=40,num_clusters=4,seed=3"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model after a few real training steps, with its leave-one-out splits."""
    data = load_interactions(SOURCE)
    splits = leave_one_out(data)
    torch.manual_seed(0)
    model = GenRecForNextItemPrediction(tiny_config(vocab_size=len(data.vocab), num_action_types=6,
                                                    max_position_embeddings=12, score_chunk_size=7))
    args = TrainingArguments(output_dir=str(tmp_path_factory.mktemp("trainer")), max_steps=6,
                             per_device_train_batch_size=16, per_device_eval_batch_size=7, learning_rate=1e-2,
                             eval_strategy="no", save_strategy="no", report_to=[], use_cpu=True,
                             remove_unused_columns=False, disable_tqdm=True, dataloader_num_workers=0)
    trainer = GenRecTrainer(model=model, args=args, train_dataset=sliding_windows(splits["train"], 12),
                            eval_dataset=DatasetDict(validation=splits["validation"], test=splits["test"]),
                            data_collator=NextItemCollator(12), eval_collator=NextItemCollator(12, mode="eval"))
    trainer.train()
    return trainer, data, splits


def _brute_force_mrr(model, rows, max_length=12):
    """MRR from the dense logits, one user at a time in Python: rank = 1 + #{j ∉ {0, y} ∪ history: s_j >= s_y}."""
    reciprocal = []
    model.eval()
    with torch.no_grad():
        for row in rows:
            history, target = row["item_ids"][:-1], row["item_ids"][-1]
            kept = slice(-max_length, None)
            logits = model(torch.tensor([history[kept]]), timestamps=torch.tensor([row["timestamps"][:-1][kept]]),
                           action_ids=torch.tensor([row["action_ids"][:-1][kept]]), output_logits=True).logits[0]
            scores = logits.tolist()
            skip = {0, target} | set(history)
            rank = 1 + sum(1 for j, s in enumerate(scores) if j not in skip and s >= scores[target])
            reciprocal.append(1 / rank)
    return sum(reciprocal) / len(reciprocal)


def test_pretraining_metrics_equal_brute_force_on_a_trained_model(trained):
    """Catches the Trainer's next-item MRR drifting from the dense brute force (the numbers pre-training has
    always reported), the uneven last batch (60 users, batches of 7) dropping or duplicating users, and a split
    name not being honoured."""
    trainer, _, splits = trained
    metrics = trainer.evaluate("test", metric_key_prefix="test")
    assert metrics["test_num_users"] == 60 and metrics["test_num_users_without_target"] == 0
    assert metrics["test_mrr"] == pytest.approx(_brute_force_mrr(trainer.model, splits["test"]), rel=1e-6)
    by_dataset = trainer.evaluate(splits["test"], metric_key_prefix="test")
    assert by_dataset["test_mrr"] == metrics["test_mrr"]
    assert trainer.evaluate("validation")["eval_mrr"] == pytest.approx(
        _brute_force_mrr(trainer.model, splits["validation"]), rel=1e-6)
    trainer.model.train()
    trainer.evaluate("test")
    assert trainer.model.training


def test_eval_dataloader_honours_num_workers_and_split_names(trained):
    """Catches the eval loader ignoring `dataloader_num_workers` (one of the two former loops did) or a string
    split name."""
    trainer, _, splits = trained
    trainer.args.dataloader_num_workers = 1
    try:
        loader = trainer.get_eval_dataloader("validation")
        assert loader.num_workers == 1 and len(loader.dataset) == len(splits["validation"])
        assert trainer.get_eval_dataloader().dataset is not None
    finally:
        trainer.args.dataloader_num_workers = 0


def test_task_protocol_through_the_same_trainer(trained):
    """Catches fine-tuning evaluation going through another loop than pre-training: a set-valued task evaluated
    by the Trainer must equal `evaluate_model` with the task's protocol, recall@K included."""
    trainer, data, _ = trained
    task = build_task("long_horizon", data)
    task_trainer = GenRecTrainer(model=trainer.model, args=trainer.args, eval_dataset=task.test,
                                 eval_collator=TaskCollator(12, mode="eval"), protocol=task.protocol, ks=(1, 10))
    got = task_trainer.evaluate()
    from torch.utils.data import DataLoader

    expected = evaluate_model(trainer.model, DataLoader(task.test, batch_size=7, collate_fn=TaskCollator(12, "eval")),
                              task.protocol, ks=(1, 10))
    for key, value in expected.items():
        assert got[f"eval_{key}"] == value, key
    assert not math.isnan(got["eval_recall@10"])


def test_one_evaluation_loop_in_the_package():
    """Catches a second `evaluation_loop` override creeping back (the drift this Trainer was merged to end)."""
    found = subprocess.run(["grep", "-rn", "def evaluation_loop", str(REPO_ROOT / "src")], capture_output=True,
                           text=True).stdout.strip().splitlines()
    assert len(found) == 1 and found[0].split(":")[0].endswith("training/trainer.py")


def test_cpu_budget_clock_counts_compute_not_waiting(tmp_path):
    """Catches the `cpu` budget clock reading wall time (a run sharing its cores with other jobs would get less
    compute than its rival under the same budget) and the `wall` clock ignoring idle time."""
    import time

    from transformers import TrainerControl, TrainerState

    from genrec_hf.training.trainer import TimeBudgetCallback

    args = TrainingArguments(output_dir=str(tmp_path), eval_strategy="no", save_strategy="no", use_cpu=True)

    def spent(callback: TimeBudgetCallback, work) -> bool:
        control = TrainerControl()
        callback.on_train_begin(args, TrainerState(), control)
        work()
        return callback.on_step_end(args, TrainerState(), control).should_training_stop

    def burn() -> None:
        start = time.process_time()
        while time.process_time() - start < 0.3:
            sum(range(1000))

    budget = 0.15 / 60  # 0.15 s
    assert spent(TimeBudgetCallback(budget, "wall"), lambda: time.sleep(0.3))
    assert not spent(TimeBudgetCallback(budget, "cpu"), lambda: time.sleep(0.3))
    assert spent(TimeBudgetCallback(budget, "cpu"), burn)
    with pytest.raises(ValueError, match=r"budget_clock='gpu'"):
        TimeBudgetCallback(1, "gpu")


def test_ddp_searches_for_unused_parameters_only_when_some_can_be_idle(tmp_path):
    """Trainer's default (find_unused_parameters=True) made every DDP run warn that it found no unused parameter;
    the search is kept only where parameters can be idle (a semantic-only item tower leaves its ID tables unused,
    and DDP would fail without it). An explicit setting is kept."""
    from tests.models.test_item_tower import tower_model

    def trainer_for(model, **explicit):
        args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True, **explicit)
        return GenRecTrainer(model=model, args=args, eval_collator=NextItemCollator(12, mode="eval"))

    assert trainer_for(GenRecForNextItemPrediction(tiny_config())).args.ddp_find_unused_parameters is False
    assert trainer_for(tower_model(fusion="semantic")).args.ddp_find_unused_parameters is True
    assert trainer_for(tower_model(fusion="gate")).args.ddp_find_unused_parameters is False
    explicit = trainer_for(GenRecForNextItemPrediction(tiny_config()), ddp_find_unused_parameters=True)
    assert explicit.args.ddp_find_unused_parameters is True
    assert explicit.required_event_inputs == ()  # the user's own setting: DDP searches, nothing to require


def test_ddp_batch_without_an_event_feature_is_refused():
    """Catches a custom collator without timestamps under DDP told no parameter is idle: the time-gap table got no
    gradient, DDP silently skipped averaging its bucket on the last step (the 2-process weights differed from one
    process's by 0.012) and failed with a reducer error on any later step."""
    from genrec_hf.training.trainer import event_feature_inputs, require_event_inputs

    model = GenRecForNextItemPrediction(tiny_config())
    assert event_feature_inputs(model) == ("timestamps", "action_ids")
    assert event_feature_inputs(GenRecForNextItemPrediction(tiny_config(num_time_buckets=0))) == ("action_ids",)
    ids = torch.ones(2, 4, dtype=torch.long)
    require_event_inputs({"input_ids": ids, "timestamps": ids, "action_ids": ids}, ("timestamps", "action_ids"))
    with pytest.raises(ValueError, match="no 'timestamps'.*num_time_buckets.*ddp_find_unused_parameters=True"):
        require_event_inputs({"input_ids": ids, "action_ids": ids}, ("timestamps", "action_ids"))


def test_ranking_bar_stays_out_of_log_files(trained, capsys):
    """The nested `ranking:` bar filled log files (stderr not a terminal) with cursor-up `[A` redraws."""
    trainer, _, _ = trained
    trainer.args.disable_tqdm = False
    try:
        trainer.evaluate()
    finally:
        trainer.args.disable_tqdm = True
    err = capsys.readouterr().err
    assert "ranking" not in err and "\x1b[A" not in err
