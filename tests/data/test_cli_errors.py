"""The CLI turns every user error into one line `genrec-hf <command>: error: ...` and exit status 2.

`--debug` shows the traceback instead; `-v/--verbose` only turns on debug logging.
"""

from __future__ import annotations

import pytest
from safetensors import SafetensorError

from genrec_hf.cli import main
from genrec_hf.data import ItemVocab

from tests.helpers import REPO_ROOT, tiny_config

TINY_DATA = "synthetic:num_users=30,num_items=40,num_clusters=3"


def error_line(capsys, command: str) -> str:
    """The single stderr line of a failed command (no traceback)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"genrec-hf {command}: error: ")
    return lines[0]


@pytest.fixture
def saved_model(tmp_path):
    """A tiny untrained model folder (weights + item_vocab.json)."""
    from genrec_hf import GenRecForNextItemPrediction

    folder = tmp_path / "model"
    GenRecForNextItemPrediction(tiny_config()).save_pretrained(folder)
    ItemVocab([str(i) for i in range(1, 41)]).save(folder)
    return folder


def test_evaluate_truncated_weights_is_one_line(saved_model, tmp_path, capsys):
    """Bug: a truncated model.safetensors escaped the CLI as a SafetensorError traceback."""
    weights = saved_model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    assert main(["evaluate", str(saved_model), "--data", TINY_DATA, "--output", str(tmp_path / "e.json")]) == 2
    line = error_line(capsys, "evaluate")
    assert f"cannot read the model weights in {saved_model}" in line and "truncated" in line


def test_evaluate_missing_weights_is_one_line(saved_model, tmp_path, capsys):
    """Bug: a model folder without its weights escaped as a multi-line OSError traceback."""
    (saved_model / "model.safetensors").unlink()
    assert main(["evaluate", str(saved_model), "--data", TINY_DATA, "--output", str(tmp_path / "e.json")]) == 2
    assert "model.safetensors" in error_line(capsys, "evaluate")


def test_debug_flag_shows_the_traceback_and_verbose_does_not(saved_model, tmp_path, capsys):
    """Bug: there was no way to get the traceback except -v, which also changed the logging; now --debug re-raises."""
    weights = saved_model / "model.safetensors"
    weights.write_bytes(b"\0" * 5)
    args = ["evaluate", str(saved_model), "--data", TINY_DATA, "--output", str(tmp_path / "e.json")]
    with pytest.raises(SafetensorError):
        main(["--debug", *args])
    with pytest.raises(SafetensorError):
        main([*args, "--debug"])  # also accepted after the command
    assert main(["-v", *args]) == 2
    error_line(capsys, "evaluate")


def test_evaluate_missing_model_folder_and_unwritable_output(saved_model, tmp_path, capsys):
    """Bug: a missing model folder, or an --output whose folder cannot be made, surfaced only as an OSError (the
    latter after evaluating). (A missing --output folder is created: tests/test_cli.py.)"""
    assert main(["evaluate", str(tmp_path / "nope"), "--data", TINY_DATA]) == 2
    assert "model folder" in error_line(capsys, "evaluate")
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    assert main(["evaluate", str(saved_model), "--data", TINY_DATA, "--output", str(blocker / "e.json")]) == 2
    assert str(blocker) in error_line(capsys, "evaluate")


@pytest.mark.parametrize("value", ["0", "-3", "ten"])
def test_evaluate_max_length_must_be_a_positive_int(value, capsys):
    """Bug: `evaluate --max_length 0` silently used the model's maximum (50)."""
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "model", "--data", TINY_DATA, "--max_length", value])
    assert exit_info.value.code == 2
    assert f"argument --max_length: expected a positive integer, got '{value}'" in capsys.readouterr().err


def test_recommend_timestamps_and_k_errors_name_the_flag(capsys):
    """Bug: `--timestamps 5,abc` failed with int()'s message, which names neither the flag nor the value."""
    with pytest.raises(SystemExit) as exit_info:
        main(["recommend", "model", "--history", "1,2", "--timestamps", "5,abc"])
    assert exit_info.value.code == 2
    assert ("argument --timestamps: expected comma-separated integers (unix seconds), got 'abc' in '5,abc'"
            in capsys.readouterr().err)
    with pytest.raises(SystemExit):
        main(["recommend", "model", "--history", "1", "--k", "0"])
    assert "argument --k: expected a positive integer, got '0'" in capsys.readouterr().err


def test_train_into_an_unwritable_output_dir_is_one_line(tmp_path, capsys):
    """Bug: an OSError (read-only folder, disk full, a file where a folder should be) escaped as a traceback."""
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    code = main(["train", str(REPO_ROOT / "recipes/pretrain/genrec-100k.yaml"), "--output_dir", str(blocker / "out"),
                 "--data.source", TINY_DATA, "--training.num_train_epochs", "1", "--training.disable_tqdm", "true",
                 "--model.overrides", "{hidden_size: 16, intermediate_size: 32, num_attention_heads: 2}",
                 "--data.max_length", "10", "--evaluation.num_examples", "0"])
    assert code == 2
    assert str(blocker) in error_line(capsys, "train")


@pytest.mark.parametrize(("content", "message"), [
    (b"- a\n- b\n", "a recipe must be a YAML mapping of sections, got list"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe binary", "not a valid YAML recipe"),
    (b"data: [1, 2\nmodel: x\n", "not a valid YAML recipe"),  # PyYAML's message spans several lines
])
def test_train_recipe_that_is_a_list_or_binary_is_one_line(tmp_path, capsys, content, message):
    """A recipe that is a YAML list, a binary file or broken YAML gives one clear line (PyYAML's error had several)."""
    recipe = tmp_path / "that.yaml"
    recipe.write_bytes(content)
    assert main(["train", str(recipe)]) == 2
    line = error_line(capsys, "train")
    assert str(recipe) in line and message in line


def test_a_process_group_left_by_a_command_is_destroyed_on_return(tmp_path, capsys):
    """Catches a distributed command that leaves its process group to interpreter shutdown, where a rank can abort
    with 'terminate called without an active exception' (seen in the 2-process DDP tests)."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        assert main(["scaling", "fit", str(tmp_path / "missing.csv")]) == 2  # even a command that fails
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
