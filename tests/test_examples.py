"""The examples run end to end on tiny settings, so they never rot."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.helpers import REPO_ROOT


@pytest.mark.parametrize(
    ("script", "args"),
    [
        ("quickstart.py", ["--epochs", "1", "--data", "synthetic:num_users=120,num_items=60,num_clusters=4"]),
        ("finetune_lora.py", ["--epochs", "1", "--data", "synthetic:num_users=120,num_items=60,num_clusters=4"]),
        ("scaling_fit.py", ["--bootstrap", "50", "--users", "300"]),
        ("scaling_ladder.py", ["--users", "120", "--epochs", "1", "--bootstrap", "20"]),
        ("serve_and_query.py", ["--epochs", "1", "--data", "synthetic:num_users=120,num_items=60,num_clusters=4"]),
        ("cold_start.py", ["--epochs", "1", "--data", "synthetic:num_users=120,num_items=60,num_clusters=4"]),
    ],
)
def test_example_runs(script, args, tmp_path):
    out = ["--output_dir", str(tmp_path / "out")] if script == "quickstart.py" else ["--workdir", str(tmp_path)]
    result = subprocess.run([sys.executable, str(REPO_ROOT / "examples" / script), *args, *out],
                            capture_output=True, text=True, cwd=REPO_ROOT, timeout=600,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
