"""Docs that run: every ```python and ```bash block of README.md and docs/*.md is executed, in order, on tiny settings.

Each document runs in a fresh folder (its `recipes/`, `examples/` and `benchmarks/` linked from the repository), its
blocks one after the other like a reader following it, sharing one Python namespace and the files earlier blocks
wrote. What changes is explicit and reviewed here, nothing else:

* `PLACEHOLDERS`: the docs' data placeholders (`/path/to/ml-100k`, ...) point at tiny stand-ins in the same formats,
  written by `write_standins` (MovieLens 100K folder and zip, MovieLens 1M, Amazon sequence text);
* `tiny()`: every `train` / `finetune` / `scaling run` / `scaling fit` gets a tiny shape, one epoch, few bootstrap
  resamples, and may write over an earlier block's output (a reader who follows the README trains the main job twice);
  an `accelerate launch ... -m genrec_hf.cli` runs the command in this process (one process: the two-process launch
  is tests/training/test_distributed.py's), and examples get the tiny arguments tests/test_examples.py gives them;
* `SETUP`: what a document assumes a reader already has (a model folder, an items file), made by the documents' own
  commands before its blocks run;
* a `pip install` line is not run: the tests run in the installed package with its dev extras (and offline).

A block that cannot run here (it installs packages, starts a server, runs the test suite or a benchmark of minutes
to hours) carries `<!-- doc-test: skip (reason) -->` on the line above its fence; the count of those is asserted
small. The whole run takes minutes of CPU (dozens of tiny trainings), hence `slow`.
"""

from __future__ import annotations

import logging
import os
import re
import runpy
import shlex
import subprocess
import sys
import zipfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

from genrec_hf.cli import main

from tests.helpers import REPO_ROOT

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

DOCUMENTS = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
SKIP = re.compile(r"<!-- doc-test: skip \((.+)\) -->\s*$")
MAX_SKIPPED = 9
RUNNABLE = {"python", "bash"}

PLACEHOLDERS = {  # longest first: /path/to/ml-100k.zip before /path/to/ml-100k
    "/path/to/amazon-toys/Toys_and_Games.txt": "data/amazon-toys/Toys_and_Games.txt",
    "/path/to/ml-100k.zip": "data/ml-100k.zip",
    "/path/to/ml-100k": "data/ml-100k",
    "path/to/ml-100k": "data/ml-100k",
    "/path/to/ml-1m": "data/ml-1m",
    "path/to/events": "data/ml-100k",
    "MODEL_DIR": "runs/ml100k",
}
TINY_SHAPE = ["--model.overrides.hidden_size", "16", "--model.overrides.intermediate_size", "32",
              "--model.overrides.num_attention_heads", "2", "--model.overrides.num_hidden_layers", "1"]
TINY_TRAIN = [*TINY_SHAPE, "--training.num_train_epochs", "1", "--training.disable_tqdm", "true",
              "--evaluation.num_examples", "1", "--overwrite_output_dir"]
TINY_FINETUNE = ["--training.num_train_epochs", "1", "--overwrite_output_dir"]
TINY_LADDER = ["--presets", "[genrec-10k, genrec-25k, genrec-50k, genrec-100k]", "--tasks.mode", "zero_shot",
               "--tasks.modes", "{}", "--pretrain.training.num_train_epochs", "1"]
TINY_LADDER_VALUES = {"--data_axis.preset": "genrec-25k"}  # the data axis on one of the tiny presets
TINY_EXAMPLES = {  # as tests/test_examples.py runs them
    "examples/scaling_fit.py": ["--bootstrap", "50", "--users", "300"],
    "examples/scaling_ladder.py": ["--users", "120", "--epochs", "1", "--bootstrap", "20"],
    "examples/cold_start.py": ["--epochs", "1", "--data", "synthetic:num_users=120,num_items=60,num_clusters=4"],
}
ML100K = "data/ml-100k"
SETUP = {
    "docs/cold_start.md": [f"genrec-hf train recipes/cold_start/genrec-100k.yaml --data.source {ML100K}"],
    "docs/evaluation.md": ["genrec-hf train recipes/pretrain/genrec-500k-mtp.yaml",
                           "genrec-hf train recipes/pretrain/genrec-500k.yaml",
                           f"genrec-hf train recipes/pretrain/genrec-100k.yaml --data.source {ML100K} "
                           "--output_dir runs/ml100k"],
    "docs/serving.md": [f"genrec-hf train recipes/pretrain/genrec-100k.yaml --data.source {ML100K} "
                        "--output_dir runs/base",
                        f"genrec-hf finetune runs/base recipes/finetune/short_horizon_lora.yaml --data.source {ML100K} "
                        "--output_dir runs/short_lora",
                        f"genrec-hf train recipes/pretrain/genrec-100k.yaml --data.source {ML100K} "
                        "--output_dir runs/base-v2 --seed 1"],
}


def blocks(path: Path) -> list[tuple[int, str, str, str | None]]:
    """(line, language, code, skip reason or None) of every fenced block."""
    text = path.read_text(encoding="utf-8")
    out = []
    for match in FENCE.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        above = text[:match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        skip = SKIP.search(above)
        out.append((line, match.group(1), match.group(2), skip.group(1) if skip else None))
    return out


def substitute(text: str) -> str:
    for placeholder, standin in PLACEHOLDERS.items():
        text = text.replace(placeholder, standin)
    return text


def tiny(argv: list[str]) -> list[str]:
    """A genrec-hf command line with the tiny settings inserted after its positional arguments."""
    command = argv[0]
    if command == "train":
        return [*argv[:2], *TINY_TRAIN, *argv[2:]]
    if command == "finetune":
        return [*argv[:3], *TINY_FINETUNE, *argv[3:]]
    if argv[:2] == ["scaling", "run"]:
        argv = [TINY_LADDER_VALUES.get(previous, value) for previous, value in zip(["", *argv], argv)]
        return [*argv[:3], *TINY_LADDER, *argv[3:]]
    if argv[:2] == ["scaling", "fit"]:
        return [*argv, "--bootstrap", "20"]
    return argv


@pytest.fixture(autouse=True)
def restore_logging():
    """A documented example configures logging for its own process (scaling_ladder.py quiets `genrec_hf.data` to
    WARNING); run here through runpy, it left that level behind and a later test's caplog saw nothing."""
    loggers = [logger for logger in logging.Logger.manager.loggerDict.values() if isinstance(logger, logging.Logger)]
    saved = {logger: (logger.level, logger.propagate, logger.disabled) for logger in loggers}
    yield
    for logger in [lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)]:
        level, logger.propagate, logger.disabled = saved.get(logger, (logging.NOTSET, True, False))
        logger.setLevel(level)  # also clears the loggers' cached effective levels


def run_command(line: str, cwd: Path) -> None:
    """One shell command line: genrec-hf and `accelerate launch -m genrec_hf.cli` in this process, `python script`
    through runpy, anything else (echo, mkdir) through bash."""
    argv = shlex.split(line, comments=True)
    if not argv or argv[:2] == ["pip", "install"]:
        return
    if argv[:2] == ["accelerate", "launch"]:
        argv = ["genrec-hf", *argv[argv.index("genrec_hf.cli") + 1:]]
    if argv[0] == "genrec-hf":
        code = main(tiny(argv[1:]))
        assert code == 0, f"`{line}` exited with {code}"
    elif argv[0] == "python":
        script, args = argv[1], argv[2:]
        old_argv = sys.argv
        sys.argv = [script, *args, *TINY_EXAMPLES.get(script, [])]
        try:
            runpy.run_path(script, run_name="__main__")
        except SystemExit as exit_info:
            assert exit_info.code in (0, None), f"`{line}` exited with {exit_info.code}"
        finally:
            sys.argv = old_argv
    else:
        result = subprocess.run(["bash", "-c", line], cwd=cwd, capture_output=True, text=True)
        assert result.returncode == 0, f"`{line}`: {result.stderr[-2000:]}"


def run_bash(code: str, cwd: Path) -> None:
    for line in code.replace("\\\n", " ").splitlines():
        run_command(substitute(line), cwd)


def write_standins(root: Path, num_users: int = 80, num_items: int = 200, seed: int = 0) -> None:
    """Tiny logs in the formats the docs name, under `root/data`: MovieLens 100K (folder + zip, with u.item genres and
    dates), MovieLens 1M (.dat) and Amazon Toys (`user item item ...`); and `root/logs/*.parquet`, the raw log of
    docs/scale.md (columns uid, sku, ts, event_type). Every item occurs; users span two months of timestamps."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    genres = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
              "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War",
              "Western"]
    popularity = 1.0 / np.arange(1, num_items + 1)
    rows, sequences = [], []
    for user in range(1, num_users + 1):
        length = int(rng.integers(15, 40))
        items = list(rng.choice(np.arange(1, num_items + 1), size=length, p=popularity / popularity.sum()))
        items[: 3] = [(3 * user + k) % num_items + 1 for k in range(3)]  # every item occurs somewhere
        times = 880_000_000 + np.cumsum(rng.integers(600, 5 * 86_400, size=length))
        rows += [(user, int(item), int(rng.integers(1, 6)), int(t)) for item, t in zip(items, times)]
        sequences.append([int(item) for item in items])
    item_genres = {item: [genres[1 + item % 18], genres[1 + (item * 7) % 18]] for item in range(1, num_items + 1)}
    logs = root / "logs"
    logs.mkdir(parents=True)
    for part in range(2):
        chunk = rows[part::2]
        pq.write_table(pa.table({"uid": [f"u{u}" for u, _, _, _ in chunk], "sku": [f"s{i}" for _, i, _, _ in chunk],
                                 "ts": [t for *_, t in chunk], "event_type": [r % 3 for _, _, r, _ in chunk]}),
                       logs / f"part-{part}.parquet")
    root = root / "data"
    folder = root / "ml-100k"
    folder.mkdir(parents=True)
    (folder / "u.data").write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in rows))
    release = {item: datetime.fromtimestamp(880_000_000 + (item % 60) * 86_400, timezone.utc)
               for item in range(1, num_items + 1)}  # spread over the log: some events are on new items
    (folder / "u.item").write_bytes("".join(
        f"{item}|Film {item} ({release[item].year})|{release[item].strftime('%d-%b-%Y')}||http://x|"
        + "|".join("1" if g in item_genres[item] else "0" for g in genres) + "\n"
        for item in range(1, num_items + 1)).encode("latin-1"))
    with zipfile.ZipFile(root / "ml-100k.zip", "w") as archive:
        for name in ("u.data", "u.item"):
            archive.write(folder / name, f"ml-100k/{name}")
    ml1m = root / "ml-1m"
    ml1m.mkdir()
    (ml1m / "ratings.dat").write_text("".join(f"{u}::{i}::{r}::{t}\n" for u, i, r, t in rows))
    (ml1m / "movies.dat").write_bytes("".join(f"{item}::Film {item} (1999)::{'|'.join(item_genres[item])}\n"
                                              for item in range(1, num_items + 1)).encode("latin-1"))
    toys = root / "amazon-toys"
    toys.mkdir()
    (toys / "Toys_and_Games.txt").write_text("".join(f"{u} " + " ".join(map(str, s)) + "\n"
                                                     for u, s in enumerate(sequences, 1)))


def test_skip_markers_are_few_and_give_reasons():
    """Catches a doc block silently excluded from the run: every skip names why, and there are few."""
    skipped = [(path.name, line, reason) for path in DOCUMENTS for line, lang, _, reason in blocks(path)
               if reason is not None]
    assert len(skipped) <= MAX_SKIPPED, skipped
    assert all(len(reason) > 10 for _, _, reason in skipped), skipped
    runnable = sum(lang in RUNNABLE for path in DOCUMENTS for _, lang, _, reason in blocks(path) if reason is None)
    assert runnable >= 30, runnable  # the docs hold dozens of runnable blocks: a broken fence regex finds none
    assert all(lang in RUNNABLE for path in DOCUMENTS for _, lang, _, reason in blocks(path) if reason), \
        "a skip marker on a block that would not run anyway"


def test_no_machine_paths_in_docs_or_skip_reasons():
    """Docs use placeholders (/path/to/...), and a test skipped for missing data names no machine path."""
    from tests.helpers import require_shared_data

    for path in DOCUMENTS:
        assert not re.search(r"\.\./shared|/work/|/root/|/home/", path.read_text()), path
    with pytest.raises(pytest.skip.Exception) as skipped:
        require_shared_data("no-such-data-set")
    assert str(REPO_ROOT.parent) not in str(skipped.value) and "/" not in str(skipped.value).split("absent")[0]


RUN_DOCUMENTS = [path for path in DOCUMENTS if any(lang in RUNNABLE and reason is None
                                                   for _, lang, _, reason in blocks(path))]


@pytest.mark.parametrize("document", RUN_DOCUMENTS, ids=lambda p: p.name)
def test_document_runs(document, tmp_path, monkeypatch, capsys):
    """Every runnable block of the document, in order, on tiny settings (module docstring)."""
    selected = [(line, lang, code) for line, lang, code, reason in blocks(document)
                if lang in RUNNABLE and reason is None]
    for name in ("recipes", "examples", "benchmarks"):
        (tmp_path / name).symlink_to(REPO_ROOT / name)
    write_standins(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.syspath_prepend(str(tmp_path))
    for command in SETUP.get(document.relative_to(REPO_ROOT).as_posix(), []):
        run_command(command, tmp_path)
    namespace: dict = {"__name__": "__doc__"}
    for line, lang, code in selected:
        where = f"{document.relative_to(REPO_ROOT)}:{line}"
        try:
            if lang == "python":
                exec(compile(substitute(code), where, "exec"), namespace)
            else:
                run_bash(code, tmp_path)
        except BaseException as error:  # noqa: BLE001 - reported with the block's place
            raise AssertionError(f"{where} ({lang} block) failed: {type(error).__name__}: {error}") from error
        capsys.readouterr()
    assert os.getcwd() == str(tmp_path)
