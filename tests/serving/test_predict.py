"""Batch prediction over a prepared folder: the lists a Recommender gives, one part per shard, per-process shards,
resume by part, refusal of another job's folder."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from genrec_hf.cli import main
from genrec_hf.data.prepare import prepare_events
from genrec_hf.serving import Recommender
from genrec_hf.serving.predict import PREDICTIONS_FILE, predict, read_predictions
from genrec_hf.training import load_recipe, train

from tests.helpers import REPO_ROOT

SOURCE = "synthetic:num_users=60,num_items=300,num_clusters=3"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    prepared = root / "prepared"
    prepare_events(SOURCE, prepared, engine="memory", num_shards=3)
    recipe = load_recipe(REPO_ROOT / "recipes/pretrain/genrec-100k.yaml", {
        "output_dir": str(root / "model"), "data.source": SOURCE, "data.max_length": "10",
        "model.overrides": "{hidden_size: 16, intermediate_size: 32, num_attention_heads: 2}",
        "training.max_steps": "2", "training.disable_tqdm": "true", "evaluation.num_examples": "0"})
    train(recipe)
    return root, prepared, root / "model"


def test_predictions_are_the_models_own_top_k(setup, tmp_path):
    """Catches a batch job whose lists differ from the model's top-k for the same full history (another history
    cut, actions or times dropped, seen items not excluded, indices not mapped back to raw ids)."""
    _, prepared, model_dir = setup
    outcome = predict(model_dir, prepared, tmp_path / "out", k=5, embeddings=True, progress=False)
    assert outcome.parts_written == 3 and outcome.manifest is not None
    table = read_predictions(tmp_path / "out")
    assert table.num_rows == 60 and len(set(table["user_id"].to_pylist())) == 60
    from genrec_hf.data import load_interactions
    from genrec_hf.loading import load_model

    model, vocab = load_model(model_dir)
    data = load_interactions(str(prepared))
    rows = {row["user_id"]: row for row in data.sequences}
    for row in table.to_pylist()[:12]:
        user = rows[row["user_id"]]
        history = [vocab.encode(data.vocab.decode(i)) for i in user["item_ids"]]
        top = model.recommend([history], k=5, timestamps=[user["timestamps"]], action_ids=[user["action_ids"]])
        found = top.items[0] > 0
        assert row["item_ids"] == [vocab.decode(int(i)) for i in top.items[0][found]]
        assert row["scores"] == pytest.approx(top.scores[0][found].tolist(), abs=1e-5)
        assert len(row["user_embedding"]) == 16
    assert Recommender.from_pretrained(model_dir) is not None
    manifest = json.loads((tmp_path / "out" / PREDICTIONS_FILE).read_text())
    assert manifest["num_users"] == 60 and len(manifest["parts"]) == 3 and manifest["job"]["k"] == 5


def test_each_process_predicts_its_own_parts_and_a_rerun_keeps_finished_ones(setup, tmp_path):
    """Catches every process predicting every shard (n times the work, racing writes), a manifest written
    before the last part is there, and a resumed job redoing finished parts."""
    _, prepared, model = setup
    out = tmp_path / "out"
    first = predict(model, prepared, out, k=3, rank=0, world_size=2, progress=False)
    assert first.parts_written == 2 and first.manifest is None  # parts 0 and 2; part 1 is the other process's
    assert not (out / PREDICTIONS_FILE).exists()
    done = {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")}
    second = predict(model, prepared, out, k=3, rank=1, world_size=2, progress=False)
    assert second.parts_written == 1 and second.manifest is not None  # the last process writes the manifest
    (out / "part-00001-of-00003.parquet").unlink()  # an interrupted job lost a part
    again = predict(model, prepared, out, k=3, progress=False)
    assert (again.parts_written, again.parts_kept) == (1, 2)
    assert all((out / name).stat().st_mtime_ns == stamp for name, stamp in done.items())
    assert read_predictions(out).num_rows == 60


def test_a_folder_of_another_job_is_refused_and_users_can_be_chosen(setup, tmp_path):
    """Catches a job with another k silently mixing its parts with an earlier job's, and `--users` ignored."""
    _, prepared, model = setup
    out = tmp_path / "out"
    predict(model, prepared, out, k=3, progress=False)
    with pytest.raises(FileExistsError, match="holds predictions of another job"):
        predict(model, prepared, out, k=4, progress=False)
    predict(model, prepared, out, k=4, overwrite=True, progress=False)
    assert {len(items) for items in read_predictions(out)["item_ids"].to_pylist()} == {4}
    some = tmp_path / "some"
    predict(model, prepared, some, k=2, users=["1", "7", "12"], progress=False)
    assert sorted(read_predictions(some)["user_id"].to_pylist()) == ["1", "12", "7"]
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="not empty and holds no predictions"):
        predict(model, prepared, tmp_path / "mine", k=2, progress=False)


def test_cli_predict_and_its_errors(setup, tmp_path, capsys):
    _, prepared, model = setup
    assert main(["predict", str(model), "--data", str(prepared), "--output_dir", str(tmp_path / "out"),
                 "--k", "3"]) == 0
    assert "3 parts written" in capsys.readouterr().out
    assert pq.read_table(tmp_path / "out" / "part-00000-of-00003.parquet").column_names == \
        ["user_id", "item_ids", "scores"]
    assert main(["predict", str(model), "--data", SOURCE, "--output_dir", str(tmp_path / "x")]) == 2
    assert "prepared" in capsys.readouterr().err
