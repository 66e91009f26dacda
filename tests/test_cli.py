"""The `genrec-hf` command as a user meets it: fast help and argument errors, a version, help text and defaults on
every option, one option style, output folders created, and a complete fine-tuning summary."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest

from genrec_hf import __version__
from genrec_hf.cli import build_parser, main

from tests.helpers import REPO_ROOT, tiny_config

TINY_DATA = "synthetic:num_users=30,num_items=40,num_clusters=3"


def _parsers(parser: argparse.ArgumentParser, name: str = "genrec-hf"):
    """(name, parser) of the command and every subcommand, nested ones included."""
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from _parsers(sub, f"{name} {sub_name}")


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == f"genrec-hf {__version__}"


def test_every_argument_has_help_and_shows_its_default():
    """Catches an option added without help text, or whose default (a k, a port, a batch size) the user cannot see
    without reading the code."""
    missing, hidden_default = [], []
    for name, parser in _parsers(build_parser()):
        text = parser.format_help()
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)) or \
                    action.help == argparse.SUPPRESS:
                continue
            label = f"{name} {action.option_strings or action.dest}"
            if not action.help:
                missing.append(label)
            elif action.default not in (None, False, argparse.SUPPRESS) and action.option_strings and \
                    "(default" not in parser._get_formatter()._get_help_string(action):
                hidden_default.append(label)
            if action.default not in (None, False, argparse.SUPPRESS) and action.option_strings:
                assert str(action.default) in " ".join(text.split()), label
        assert parser.description or name == "genrec-hf", f"{name} has no description"
    assert not missing, missing
    assert not hidden_default, hidden_default


def test_one_option_style_and_the_old_spelling_still_parses():
    """Every option is spelled with underscores (`--size_column`, like `--output_dir`); the one hyphenated option of
    earlier versions still parses, hidden from the help."""
    hyphenated = [option for name, parser in _parsers(build_parser()) for action in parser._actions
                  if action.help != argparse.SUPPRESS for option in action.option_strings
                  if option.startswith("--") and "-" in option[2:]]
    assert not hyphenated, hyphenated
    args = build_parser().parse_args(["scaling", "fit", "r.csv", "--size-column", "train_events"])
    assert args.size_column == "train_events"
    assert build_parser().parse_args(["scaling", "fit", "r.csv"]).size_column == "backbone_params"
    fit_help = build_parser()._subparsers._group_actions[0].choices["scaling"]._subparsers._group_actions[0] \
        .choices["fit"].format_help()
    assert "--size_column" in fit_help and "--size-column" not in fit_help


def test_help_and_argument_errors_do_not_load_torch():
    """`genrec-hf --help` and a typo cost ~5 CPU-seconds when the package root imported torch; both must answer from
    argparse alone."""
    code = ("import sys\nfrom genrec_hf.cli import main\n"
            "for argv in (['--help'], ['recommend', '--help'], ['evaluate', 'm', '--max_length', '0'], ['trian']):\n"
            "    try:\n        main(argv)\n    except SystemExit as exit:\n        print(argv[0], exit.code)\n"
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={"PYTHONPATH": str(REPO_ROOT / "src"), "PATH": ""})
    assert result.returncode == 0, result.stderr[-2000:]
    exits = [line for line in result.stdout.splitlines() if line.split(" ")[-1] in ("0", "2")
             and line.split(" ")[0] in ("--help", "recommend", "evaluate", "trian")]
    assert exits == ["--help 0", "recommend 0", "evaluate 2", "trian 2"], result.stdout[-2000:]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """An untrained tiny model over the tiny synthetic catalog (ids as the data has them)."""
    from genrec_hf import GenRecForNextItemPrediction
    from genrec_hf.data import load_interactions, save_item_tokenizer

    data = load_interactions(TINY_DATA)
    config = tiny_config(vocab_size=len(data.vocab), num_action_types=data.num_action_types)
    folder = tmp_path_factory.mktemp("cli") / "model"
    GenRecForNextItemPrediction(config).save_pretrained(folder)
    save_item_tokenizer(folder, data.vocab, config)
    return folder


def test_evaluate_output_folder_is_created(model_dir, tmp_path, capsys):
    """Bug: `evaluate --output runs/eval/x.json` failed on a fresh checkout ('folder runs/eval does not exist')."""
    output = tmp_path / "eval" / "nested" / "test.json"
    assert main(["evaluate", str(model_dir), "--data", TINY_DATA, "--output", str(output)]) == 0
    assert json.loads(output.read_text())["num_users"] > 0
    capsys.readouterr()


def test_export_out_parent_is_created(model_dir, tmp_path, capsys):
    """Bug: the README's `export-embeddings --out runs/embeddings/v1` failed on a fresh checkout."""
    out = tmp_path / "embeddings" / "v1"
    assert main(["export-embeddings", str(model_dir), "--data", TINY_DATA, "--out", str(out)]) == 0
    assert (out / "manifest.json").is_file()
    capsys.readouterr()


def test_finetune_summary_is_complete(monkeypatch, capsys):
    """Bug: `finetune` printed neither the trainable parameters nor the output folder nor the zero-shot comparison
    that metrics.json holds (it filtered on a key metrics never had)."""
    metrics = {"task": "short_horizon", "mode": "lora", "dataset": "synthetic", "output_dir": "runs/x-lora",
               "test": {"mrr": 0.30, "hr@10": 0.5}, "zero_shot_test": {"mrr": 0.20, "hr@10": 0.5},
               "parameters": {"trainable": 1234, "total": 100000, "trainable_fraction": 0.01234}}
    monkeypatch.setattr("genrec_hf.training.run_finetune", lambda *args, **kwargs: metrics)
    assert main(["finetune", "base", "recipe.yaml"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["output_dir"] == "runs/x-lora" and summary["trainable_parameters"] == 1234
    assert summary["total_parameters"] == 100000 and summary["zero_shot_test"]["mrr"] == 0.20
    assert summary["test_minus_zero_shot"] == {"mrr": pytest.approx(0.10), "hr@10": 0.0}


@pytest.mark.parametrize(("rank", "quiet"), [(None, False), ("0", False), ("1", True)])
def test_one_rank_logs_the_data_lines(monkeypatch, tmp_path, capsys, rank, quiet):
    """Both DDP ranks logged every data line ('ml-100k: 943 users, ...'); ranks after the first warn only."""
    import logging

    logger = logging.getLogger("genrec_hf")
    before = logger.level
    for variable in ("RANK", "LOCAL_RANK"):
        monkeypatch.delenv(variable, raising=False)
    if rank is not None:
        monkeypatch.setenv("RANK", rank)
    try:
        main(["scaling", "fit", str(tmp_path / "missing.csv")])  # any command: the logging is set up first
        assert logger.level == (logging.WARNING if quiet else before)
    finally:
        logger.setLevel(before)
    capsys.readouterr()
