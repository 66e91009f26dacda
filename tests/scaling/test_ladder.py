"""The scaling-ladder runner: recipe checks, CSV schema, fixed item-vector width, paired ranks, resumability."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from genrec_hf.scaling.ladder import BASE_DONE, MARKER, LadderRecipe, csv_columns, load_ladder_recipe, run_ladder
from genrec_hf.scaling.ladder import runner as ladder_runner
from genrec_hf.scaling.ladder.shared import prepare_shared
from genrec_hf.training.recipes import apply_overrides, recipe_from_dict

from tests.helpers import REPO_ROOT

TINY_DATA = "synthetic:num_users=120,num_items=60,num_clusters=4"
PRESETS = ["genrec-10k", "genrec-25k", "genrec-50k", "genrec-100k"]


TINY_FINETUNE = {"max_train_minutes": None, "evaluation": {"early_stopping_patience": None},
                 "training": {"num_train_epochs": 1, "use_cpu": True, "disable_tqdm": True}}


def tiny_raw(output_dir: Path, **changes) -> dict:
    """A tiny ladder recipe; `changes` set keys by dotted path (`pretrain.model.overrides`) or replace a section."""
    raw = {
        "output_dir": str(output_dir),
        "presets": list(PRESETS),
        "item_embedding_size": 16,
        "pretrain": {
            "max_train_minutes": None,
            "data": {"source": TINY_DATA, "max_length": 20, "batching": "padded"},
            "training": {"num_train_epochs": 1, "use_cpu": True, "disable_tqdm": True,
                         "per_device_train_batch_size": 64},
            "evaluation": {"early_stopping_patience": None},
        },
        "tasks": {"names": ["short_horizon", "long_horizon"], "mode": "lora", "modes": {"short_horizon": "zero_shot"},
                  "finetune": TINY_FINETUNE},
        "evaluation": {"ks": [10]},
    }
    return apply_overrides(raw, {key.replace("__", "."): value for key, value in changes.items()})


def tiny_recipe(output_dir: Path, **changes) -> LadderRecipe:
    return recipe_from_dict(tiny_raw(output_dir, **changes), source="test", kind=LadderRecipe)


def read_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


@pytest.fixture(scope="module")
def finished_ladder(tmp_path_factory):
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path_factory.mktemp("ladder") / "run"
        recipe = tiny_recipe(out)
        outcome = run_ladder(recipe)
    finally:
        torch.set_num_threads(threads)
    return recipe, outcome


def test_shipped_ladder_recipes_are_valid():
    paths = sorted((REPO_ROOT / "recipes" / "scaling").glob("*.yaml"))
    assert paths
    for path in paths:
        recipe = load_ladder_recipe(path)
        assert len(recipe.presets) >= 6
        text = path.read_text()
        assert f"genrec-hf scaling run recipes/scaling/{path.name}" in text
        for line in text.splitlines():
            if line.strip() and not line.lstrip().startswith("#") and ":" in line:
                assert "#" in line, f"{path.name}: key without a comment: {line!r}"


def test_csv_schema_and_one_row_per_size_and_task(finished_ladder):
    from genrec_hf import GenRecConfig, count_backbone_parameters

    recipe, outcome = finished_ladder
    header, rows = read_rows(outcome.csv_path)
    assert header == csv_columns([10])
    assert outcome.rows_written == len(rows) == len(PRESETS) * 2
    assert {(r["preset"], r["task"]) for r in rows} == {(p, t) for p in PRESETS for t in ("short_horizon",
                                                                                          "long_horizon")}
    for row in rows:
        expected = count_backbone_parameters(GenRecConfig.from_preset(row["preset"], vocab_size=10))
        assert int(row["backbone_params"]) == expected  # transformer blocks only, as the fit expects
        assert 0.0 < float(row["mrr"]) <= 1.0
        assert row["mode"] == ("zero_shot" if row["task"] == "short_horizon" else "lora")
        assert row["ladder_id"] == recipe.ladder_id()
    # every size is evaluated on the same users: the same count per task
    for task in ("short_horizon", "long_horizon"):
        assert len({r["num_users"] for r in rows if r["task"] == task}) == 1


def test_saved_ranks_reproduce_the_row_and_feed_a_paired_user_bootstrap(finished_ladder):
    from genrec_hf.evaluation import per_user_values as per_user_metric
    from genrec_hf.scaling import fit_csv, load_ranks

    _, outcome = finished_ladder
    _, rows = read_rows(outcome.csv_path)
    for row in rows:
        ranks = load_ranks(outcome.csv_path.parent / row["ranks_path"])
        assert ranks.shape[0] == int(row["num_users"])
        assert np.nanmean(per_user_metric(ranks, "mrr")) == pytest.approx(float(row["mrr"]), abs=1e-9)
    fits = fit_csv(outcome.csv_path, n_bootstrap=20)
    assert set(fits) == {"short_horizon", "long_horizon"}
    assert all(f.bootstrap == "ranks" and f.paired for f in fits.values())


def test_item_embedding_width_is_fixed_while_the_blocks_grow(finished_ladder):
    from genrec_hf import GenRecForNextItemPrediction

    recipe, outcome = finished_ladder
    widths, hidden = set(), []
    for preset in PRESETS:
        model = GenRecForNextItemPrediction.from_pretrained(Path(recipe.output_dir) / "sizes" / preset / "base")
        widths.add(tuple(model.item_vectors.shape[1:]))
        assert model.config.head_output_size == 16 and not model.config.tie_word_embeddings
        hidden.append(model.config.hidden_size)
    assert widths == {(16,)}  # the items are scored in one fixed 16-d space at every size
    assert len(set(hidden)) > 1
    _, rows = read_rows(outcome.csv_path)
    assert {r["item_embedding_size"] for r in rows} == {"16"}


def test_finished_sizes_are_skipped_not_retrained(finished_ladder, monkeypatch):
    recipe, outcome = finished_ladder
    before = outcome.csv_path.read_bytes()
    weights = Path(recipe.output_dir) / "sizes" / "genrec-25k" / "base" / "model.safetensors"
    stamp = weights.stat().st_mtime_ns

    def forbidden(*args, **kwargs):
        raise AssertionError("a finished size was trained again")

    monkeypatch.setattr(ladder_runner, "_pretrain", forbidden)
    monkeypatch.setattr(ladder_runner, "_run_task", forbidden)
    again = run_ladder(tiny_recipe(Path(recipe.output_dir)))
    assert (again.rows_written, again.rows_skipped) == (0, len(PRESETS) * 2)
    assert outcome.csv_path.read_bytes() == before
    assert weights.stat().st_mtime_ns == stamp


def test_interrupted_task_resumes_without_retraining_the_base(tmp_path, monkeypatch, one_thread):
    out = tmp_path / "run"
    recipe = tiny_recipe(out, presets=["genrec-10k"])
    real_run_task = ladder_runner._run_task

    def interrupted(recipe, shared, preset, fraction, task, *args, **kwargs):
        if task == "long_horizon":
            (out / "sizes" / preset / task).mkdir(parents=True, exist_ok=True)
            (out / "sizes" / preset / task / MARKER).write_text("{}")
            (out / "sizes" / preset / task / "half-written.bin").write_text("x")
            raise KeyboardInterrupt
        return real_run_task(recipe, shared, preset, fraction, task, *args, **kwargs)

    monkeypatch.setattr(ladder_runner, "_run_task", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_ladder(recipe)
    _, rows = read_rows(out / "results.csv")
    assert [r["task"] for r in rows] == ["short_horizon"]
    first = rows[0]
    monkeypatch.setattr(ladder_runner, "_run_task", real_run_task)
    monkeypatch.setattr(ladder_runner, "_pretrain", lambda *a, **k: pytest.fail("finished base trained again"))
    outcome = run_ladder(tiny_recipe(out, presets=["genrec-10k"]))
    _, rows = read_rows(outcome.csv_path)
    assert [r["task"] for r in rows] == ["short_horizon", "long_horizon"]
    assert rows[0] == first  # the finished row is untouched
    assert not (out / "sizes" / "genrec-10k" / "long_horizon" / "half-written.bin").exists()


def test_budget_clock_boxes_pretraining_and_fine_tunes_and_labels_the_stop(tmp_path, monkeypatch, one_thread):
    """`budget_clock: cpu` must reach both time boxes and the stop label, not only the recipe check: the ladder
    once accepted the key and ran every box (and judged `pretrain_stop`) on the wall clock."""
    from genrec_hf.training import trainer as trainer_module

    clocks = []

    class Recording(trainer_module.TimeBudgetCallback):
        def __init__(self, max_minutes, clock="wall"):
            clocks.append(clock)
            super().__init__(max_minutes, clock)

    racing = iter(range(1, 10**9))  # wall time races ahead (a loaded machine); CPU time does not
    monkeypatch.setattr(trainer_module, "TimeBudgetCallback", Recording)
    monkeypatch.setitem(trainer_module.BUDGET_CLOCKS, "wall", lambda: next(racing) * 1e4)
    recipe = tiny_recipe(tmp_path / "run", presets=["genrec-10k"], budget_clock="cpu",
                         pretrain__max_train_minutes=60.0, tasks__names=["long_horizon"], tasks__modes={},
                         tasks__finetune__max_train_minutes=60.0)
    assert recipe.finetune_recipe("long_horizon", tmp_path / "t").budget_clock == "cpu"
    assert recipe.pretrain_recipe("genrec-10k", tmp_path / "b").budget_clock == "cpu"
    outcome = run_ladder(recipe)
    assert clocks == ["cpu", "cpu"]  # pre-training box, then the fine-tune's
    (row,) = outcome.rows
    assert row["pretrain_stop"] == "epochs"  # one epoch ran; the 60 CPU-minute box was never reached
    info = json.loads((tmp_path / "run" / "sizes" / "genrec-10k" / "base" / BASE_DONE).read_text())
    assert info["budget_clock"] == "cpu" and 0 < info["cpu_seconds"] < 60 * 60


def test_interrupted_pretraining_restarts_cleanly_but_a_users_folder_is_refused(tmp_path, one_thread):
    out = tmp_path / "run"
    base = out / "sizes" / "genrec-10k" / "base"
    base.mkdir(parents=True)
    (out / MARKER).write_text("{}")
    (out / "sizes" / "genrec-10k" / MARKER).write_text("{}")
    (base / MARKER).write_text("{}")
    (base / "checkpoint-3").mkdir()  # what a killed pre-training leaves: no ladder_base.json
    recipe = tiny_recipe(out, presets=["genrec-10k"], tasks__names=["short_horizon"], tasks__mode="zero_shot",
                         tasks__modes={})
    outcome = run_ladder(recipe)
    assert outcome.rows_written == 1
    assert (base / "ladder_base.json").is_file() and not (base / "checkpoint-3").exists()

    other = tmp_path / "users-run"
    user_base = other / "sizes" / "genrec-10k" / "base"
    user_base.mkdir(parents=True)
    (other / MARKER).write_text("{}")
    (user_base / "my_model.safetensors").write_text("precious")
    with pytest.raises(FileExistsError, match="not written by the scaling ladder"):
        run_ladder(tiny_recipe(other, presets=["genrec-10k"], tasks__names=["short_horizon"],
                               tasks__mode="zero_shot", tasks__modes={}))
    assert (user_base / "my_model.safetensors").read_text() == "precious"


def test_output_dir_of_someone_else_and_csv_of_another_ladder_are_refused(tmp_path, finished_ladder):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="not written by the scaling ladder"):
        run_ladder(tiny_recipe(mine))
    recipe, outcome = finished_ladder
    copy = tmp_path / "copy"
    copy.mkdir()
    shutil.copy(outcome.csv_path, copy / "results.csv")
    changed = tiny_recipe(tmp_path / "fresh", seed=1, results_csv=str(copy / "results.csv"))  # another setting
    with pytest.raises(ValueError, match="holds rows of another ladder"):
        run_ladder(changed)


def test_data_axis_rows_share_the_evaluation_users(tmp_path, one_thread):
    from genrec_hf.scaling import fit_csv

    out = tmp_path / "run"
    recipe = tiny_recipe(out, presets=["genrec-10k"], tasks__names=["short_horizon"], tasks__mode="zero_shot",
                         tasks__modes={}, data_axis={"preset": "genrec-10k", "fractions": [0.2, 0.4, 0.7]})
    outcome = run_ladder(recipe)
    header, rows = read_rows(outcome.data_axis_csv_path)
    assert header == csv_columns([10])
    assert sorted(float(r["data_fraction"]) for r in rows) == [0.2, 0.4, 0.7, 1.0]
    events = [int(r["train_events"]) for r in sorted(rows, key=lambda r: float(r["data_fraction"]))]
    assert events == sorted(events) and len(set(events)) == 4
    assert len({r["num_users"] for r in rows}) == 1  # fewer training users, the same evaluation users
    fits = fit_csv(outcome.data_axis_csv_path, size_column="train_events", n_bootstrap=10)
    assert fits["short_horizon"].size_name == "train_events" and fits["short_horizon"].paired


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"presets": ["genrec-3k"]}, r"presets: unknown preset\(s\) \['genrec-3k'\]"),
        ({"presets": ["genrec-10k", "genrec-10k"]}, r"lists \['genrec-10k'\] more than once"),
        ({"presets": []}, r"presets is empty"),
        ({"presets": ["genrec-10k", "sasrec"]}, r"preset 'sasrec' also sets"),
        ({"presets": "genrec-10k"}, r"presets='genrec-10k' has the wrong type: expected a list of str"),
        ({"pretrain.model.overrides": {"hidden_size": 64}}, r"block shape is what the presets vary"),
        ({"pretrain.model.overrides": {"vocab_size": 64}}, r"takes from the data"),
        ({"pretrain.model.overrides": {"head_projection_ratio": 2}}, r"which item_embedding_size=16 decides"),
        ({"item_embedding_size": 48}, r"item_embedding_size=48 does not divide the hidden_size 32"),
        ({"item_embedding_size": 0}, r"item_embedding_size=0; expected a positive integer"),
        ({"pretrain.model.overrides": {"hidden_dropout_prob": 1.5}}, r"hidden_dropout_prob=1.5 is invalid"),
        ({"pretrain.model.preset": "genrec-2m"}, r"pretrain.model.preset is set by the ladder \(one per size"),
        ({"pretrain.seed": 3}, r"pretrain.seed is set by the ladder \(from the top-level seed"),
        ({"pretrain.evaluation.ks": [5]}, r"pretrain.evaluation.ks is set by the ladder \(from evaluation.ks"),
        ({"tasks.finetune.mode": "full"}, r"tasks.finetune.mode is set by the ladder \(from tasks.mode"),
        ({"tasks.finetune.data": {"max_length": 5}}, r"tasks.finetune.data is set by the ladder \(from pretrain.data"),
        ({"pretrain.data.split": "time"}, r"pretrain.data.split='time'; the ladder pre-trains"),
        ({"tasks.names": ["nope"], "tasks.modes": {}}, r"task.name='nope'; registered tasks are"),
        ({"tasks.names": [], "tasks.modes": {}}, r"tasks.names is empty"),
        ({"tasks.mode": "frozen"}, r"tasks.mode='frozen'; expected one of"),
        ({"tasks.names": ["short_horizon"], "tasks.modes": {"long_horizon": "full"}},
         r"tasks.modes names task 'long_horizon', which is not in tasks.names"),
        ({"tasks.names": ["short_horizon"], "tasks.params": {"short_horizon": {"window": 3}}},
         r"task 'short_horizon' has no parameter\(s\) \['window'\]"),
        ({"tasks.finetune.training": {"learning_rat": 1.0}},
         r"unknown TrainingArguments field\(s\) \['learning_rat'\]"),
        ({"tasks.finetune.max_train_minutes": 0}, r"max_train_minutes=0"),
        ({"tasks.finetune.lora": {"rank": 4}}, r"tasks.finetune.lora: unknown key\(s\) \['rank'\]"),
        ({"data_axis": {"preset": "genrec-2m", "fractions": [0.5]}}, r"data_axis.preset='genrec-2m' is not one of"),
        ({"data_axis": {"preset": "genrec-10k", "fractions": [1.5]}}, r"must lie in \(0, 1\)"),
        ({"data_axis": {"preset": None, "fractions": [0.5]}}, r"data_axis.preset is null"),
        ({"evaluation.fit_split": "train"}, r"evaluation.fit_split='train'"),
        ({"evaluation.cold_slice_max_events": -1}, r"evaluation.cold_slice_max_events=-1; expected a count"),
        ({"pretrain.data.batching": "stacked"}, r"pretrain.data.batching='stacked'"),
        ({"pretrain.max_train_minutes": -1.0}, r"max_train_minutes=-1.0"),
        ({"budget_clock": "gpu"}, r"budget_clock='gpu'; expected one of \['cpu', 'wall'\]"),
        ({"sizes": ["genrec-10k"]}, r"unknown top-level key\(s\) \['sizes'\]"),
    ],
)
def test_bad_recipes_name_the_key(tmp_path, changes, message):
    raw = apply_overrides(tiny_raw(tmp_path), changes)
    with pytest.raises(ValueError, match=message):
        recipe_from_dict(raw, source="test", kind=LadderRecipe)


def test_cli_run_errors_are_one_line(tmp_path, capsys):
    from genrec_hf.cli import main

    assert main(["scaling", "run", str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("genrec-hf scaling: error: Ladder recipe") and "\n" not in err
    path = tmp_path / "ladder.yaml"
    path.write_text(json.dumps(tiny_raw(tmp_path / "out")))
    assert main(["scaling", "run", str(path), "--presets", "[genrec-7k]"]) == 2
    assert "unknown preset(s) ['genrec-7k']" in capsys.readouterr().err


def test_cold_slice_ranks_keep_only_targets_of_rare_items():
    from genrec_hf.scaling.ladder import cold_slice_ranks

    counts = np.array([0, 9, 0, 2, 5])  # item 0 is padding: never cold, whatever its count
    ranks = np.array([[3, 0], [1, 7], [4, 2], [6, 6]])
    targets = np.array([[1, 0], [2, 1], [3, 4], [0, 0]])  # row 3 is padding only
    rows, sliced = cold_slice_ranks(ranks, targets, counts, max_events=2)
    assert rows.tolist() == [1, 2]  # row 0's only target (item 1) has 9 events
    assert sliced.tolist() == [[1, 0], [4, 0]]  # warm targets' ranks are dropped, tied ranks kept as they are
    rows, _ = cold_slice_ranks(ranks, targets, counts, max_events=0)
    assert rows.tolist() == [1]
    rows, sliced = cold_slice_ranks(ranks[:, :1], targets, counts, max_events=5)  # narrower ranks are padded
    assert rows.tolist() == [1, 2] and sliced.tolist() == [[1, 0], [4, 0]]
    rows, sliced = cold_slice_ranks(np.array([3, 1, 4, 6]), targets[:, 0], counts, max_events=2)  # (U,) ranks
    assert rows.tolist() == [1, 2] and sliced.tolist() == [[1], [4]]
    with pytest.raises(ValueError, match="3 ranked rows for 4 target rows"):
        cold_slice_ranks(ranks[:3], targets, counts, max_events=2)


def test_cold_slice_rows_score_the_rare_targets_and_are_healed_without_training(tmp_path, monkeypatch, one_thread):
    from genrec_hf.scaling import fit_csv

    out = tmp_path / "run"
    presets = ["genrec-10k", "genrec-25k", "genrec-50k", "genrec-100k"]
    changes = {"presets": presets, "tasks__names": ["short_horizon"], "tasks__mode": "zero_shot", "tasks__modes": {}}
    shared = prepare_shared(tiny_recipe(out, **changes))
    task = shared.tasks["short_horizon"]
    target_counts = np.array([shared.item_counts[t[0]] for t in task.test["target_ids"]])
    limit = int(np.median(target_counts))  # a slice that holds some test users and not all
    cold_users = np.flatnonzero(target_counts <= limit)
    assert 0 < cold_users.size < len(target_counts)
    recipe = tiny_recipe(out, **changes, evaluation__cold_slice_max_events=limit)
    outcome = run_ladder(recipe)
    _, rows = read_rows(outcome.csv_path)
    assert sorted((r["preset"], r["task"]) for r in rows) == sorted(
        (p, t) for p in presets for t in ("short_horizon", "short_horizon/cold"))
    by_key = {(r["preset"], r["task"]): r for r in rows}
    for preset in presets:
        whole, cold = by_key[preset, "short_horizon"], by_key[preset, "short_horizon/cold"]
        parent_ranks = np.load(outcome.csv_path.parent / whole["ranks_path"])[:, 0]
        assert int(cold["num_users"]) == cold_users.size
        assert float(cold["mrr"]) == pytest.approx(np.mean(1.0 / parent_ranks[cold_users]), abs=1e-9)
        assert cold["test_mrr"] == cold["mrr"] and cold["validation_mrr"] == ""
        assert cold["backbone_params"] == whole["backbone_params"]
    assert fit_csv(outcome.csv_path, task="short_horizon/cold", n_bootstrap=10)["short_horizon/cold"].paired
    # the counts are the events pre-training trained on: they add up to the bases' train_events, padding never counts
    assert shared.item_counts[0] == 0 and int(shared.item_counts.sum()) == int(rows[0]["train_events"])

    # an interruption between a task's row and its slice: the next run derives the slice from the saved ranks
    header, _ = read_rows(outcome.csv_path)
    with outcome.csv_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=header)
        writer.writeheader()
        writer.writerows(r for r in rows if not (r["preset"] == "genrec-25k" and r["task"].endswith("/cold")))
    monkeypatch.setattr(ladder_runner, "_pretrain", lambda *a, **k: pytest.fail("a base was trained again"))
    monkeypatch.setattr(ladder_runner, "_run_task", lambda *a, **k: pytest.fail("a task was run again"))
    again = run_ladder(recipe)
    assert again.rows_written == 1
    _, healed = read_rows(again.csv_path)
    restored = next(r for r in healed if (r["preset"], r["task"]) == ("genrec-25k", "short_horizon/cold"))
    assert {k: v for k, v in restored.items() if k != "finished_at"} == \
        {k: v for k, v in by_key["genrec-25k", "short_horizon/cold"].items() if k != "finished_at"}


def test_item_tower_ladder_gives_every_size_the_same_tower_and_scores_unseen_items_by_features(tmp_path, one_thread):
    import torch

    from genrec_hf import GenRecForNextItemPrediction

    out = tmp_path / "run"
    tower = {"fusion": "sum", "mask_prob": 0.1, "tower_hidden_size": 16}
    recipe = tiny_recipe(out, presets=["genrec-10k", "genrec-25k"], tasks__names=["short_horizon"],
                         tasks__mode="lora", tasks__modes={}, pretrain__model__item_tower=tower,
                         pretrain__model__item_features={"text_encoder": "hashing", "hashing_dim": 32})
    outcome = run_ladder(recipe)
    _, rows = read_rows(outcome.csv_path)
    assert {(r["preset"], r["task"]) for r in rows} == {(p, "short_horizon") for p in ("genrec-10k", "genrec-25k")}
    shared = prepare_shared(recipe)
    unseen = torch.as_tensor(shared.item_counts == 0)
    unseen[0] = False
    assert unseen.any()  # the tiny log has an item that only appears after the task anchors
    schemas, known = [], []
    for preset in ("genrec-10k", "genrec-25k"):
        model = GenRecForNextItemPrediction.from_pretrained(out / "sizes" / preset / "base")
        assert model.item_tower is not None and model.config.item_tower_config.mask_prob == 0.1
        schemas.append(model.config.item_tower_config.feature_schema)
        known.append(model.item_tower.item_known.clone())
        assert model.item_tower.item_features.abs().sum() > 0  # the feature rows were copied in, not left at zero
    assert schemas[0] == schemas[1]  # one feature store and one tower config at every size
    assert torch.equal(known[0], known[1])
    # items pre-training never trained on are the tower's OOV items: only their features tell them apart
    assert not known[0][unseen].any() and known[0][1:][~unseen[1:]].all()
    assert recipe.ladder_id() != tiny_recipe(out).ladder_id()  # a tower ladder's rows never mix with an ID-only one's
    assert "item_tower" not in tiny_recipe(out).fixed_settings()["pretrain"]["model"]  # off: the ID-only ladder id
    bad = tiny_raw(tmp_path, pretrain__model__item_tower={"fusion": "concat"})
    with pytest.raises(ValueError, match=r"pretrain.model.item_tower.fusion='concat'; expected one of"):
        recipe_from_dict(bad, source="test", kind=LadderRecipe)
