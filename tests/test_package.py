"""`import genrec_hf` is cheap (no torch, no transformers) and still registers GenRec with transformers' Auto classes
and pipeline registry, whatever order the user imports things in."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from tests.helpers import REPO_ROOT, tiny_config


def _run(code: str, cwd) -> subprocess.CompletedProcess:
    env = {"HF_HUB_OFFLINE": "1", "PATH": "", "PYTHONPATH": str(REPO_ROOT / "src"), "OMP_NUM_THREADS": "1",
           "HF_HOME": str(cwd / "hf_home")}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, cwd=cwd,
                          env=env)


def test_importing_the_package_and_the_cli_loads_neither_torch_nor_transformers(tmp_path):
    """Catches an eager import in the package root or the CLI module: `genrec-hf --help` paid 5 CPU-seconds of
    torch + transformers before argparse ran."""
    result = _run("""
        import sys
        import genrec_hf, genrec_hf.cli
        heavy = sorted(m for m in ("torch", "transformers", "peft", "datasets", "accelerate") if m in sys.modules)
        assert not heavy, heavy
        print(genrec_hf.__version__)
    """, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    help_run = subprocess.run([sys.executable, "-m", "genrec_hf.cli", "--help"], capture_output=True, text=True,
                              env={"PYTHONPATH": str(REPO_ROOT / "src"), "PATH": ""})
    assert help_run.returncode == 0 and "train" in help_run.stdout, help_run.stderr[-2000:]


AUTO = "from transformers import AutoConfig, AutoModel, AutoTokenizer"


@pytest.mark.parametrize("imports", [
    f"import genrec_hf\n{AUTO}",
    f"{AUTO}\nimport genrec_hf",
    f"import genrec_hf\nimport transformers.modeling_utils\n{AUTO}",
    f"import genrec_hf\nfrom genrec_hf import GenRecForNextItemPrediction\n{AUTO}",
], ids=["genrec_first", "transformers_first", "modeling_utils_in_between", "model_class_first"])
def test_import_registers_the_auto_classes_in_any_order(tmp_path, imports):
    """A Python user who imported genrec_hf loads a run folder with the Auto classes, without trust_remote_code:
    catches a lazy registration that misses an import order (or runs while a transformers module is half-loaded)."""
    from genrec_hf import GenRecForNextItemPrediction
    from genrec_hf.data import ItemVocab, save_item_tokenizer

    GenRecForNextItemPrediction(tiny_config()).save_pretrained(tmp_path / "run")
    save_item_tokenizer(tmp_path / "run", ItemVocab([str(i) for i in range(1, 41)]), tiny_config())
    result = _run(imports + f"""
import sys
run = {str(tmp_path / 'run')!r}
config = AutoConfig.from_pretrained(run)
model = AutoModel.from_pretrained(run)
tokenizer = AutoTokenizer.from_pretrained(run)
for obj in (config, model, tokenizer):
    assert type(obj).__module__.startswith("genrec_hf."), type(obj).__module__
assert type(model).__name__ == "GenRecForNextItemPrediction"
from transformers import pipeline
recommend = pipeline("next-item-recommendation", model=model, tokenizer=tokenizer)
assert len(recommend(["1", "2"], top_k=3)) == 3
print("ok")
""", tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ok" in result.stdout


def test_lazy_names_resolve_and_unknown_names_fail():
    """The root's public names (PEP 562) are the real classes; a typo is an AttributeError, not None."""
    import genrec_hf
    from genrec_hf.models.genrec.modeling_genrec import GenRecForNextItemPrediction

    assert genrec_hf.GenRecForNextItemPrediction is GenRecForNextItemPrediction
    assert set(genrec_hf.__all__) <= set(dir(genrec_hf))
    assert isinstance(genrec_hf.TopItems(torch.zeros(1), torch.zeros(1)), genrec_hf.TopItems)
    with pytest.raises(AttributeError, match="GenRecModle"):
        genrec_hf.GenRecModle  # noqa: B018
