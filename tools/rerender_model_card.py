"""Re-render a shipped example card (model_cards/*.md) with today's template when its run folder is gone.

    python tools/rerender_model_card.py model_cards/sasrec-ml-100k.md [more cards...]

A card is generated from a run folder (`genrec-hf card RUN_DIR --repo_id NAME`); the weights of the benchmarked runs
are not kept, but everything the card is rendered from is recorded in the card itself: the config in its
architecture table, the metrics in its model-index (and the most-popular row of its results table), the recipe in its
YAML block, the dataset and protocol lines. This rebuilds those files in a temporary folder (config.json from the
table's shape on top of the preset, written on the meta device: no weights) and renders the card again. It refuses
to write when the re-rendered architecture or parameter tables, or any recorded number, differ from the old card:
then the reconstruction is not the run, and the run must be trained again (`genrec-hf train`, then `genrec-hf card`).
"""

from __future__ import annotations

import json
import re
import sys
import tempfile
from pathlib import Path

import yaml
from huggingface_hub import ModelCard

from genrec_hf import GenRecConfig
from genrec_hf.cards import build_model_card

ARCHITECTURE = re.compile(r"^## Architecture and size\n(.*?)\n## ", re.S | re.M)


def _table(text: str) -> dict[str, str]:
    return {m.group(1): m.group(2) for m in re.finditer(r"^\| ([^|]+?) \| ([^|]+?) \|$", text, re.M)}


def _config(card: ModelCard) -> GenRecConfig:
    facts = _table(ARCHITECTURE.search(card.text).group(1))
    mlp, intermediate, act = re.match(r"(\w+), (\d+) \((\w+)\)", facts["feed-forward"]).groups()
    positions = facts["positions"]
    encoding = "rope" if positions.startswith("rotary") else "learned" if positions.startswith("learned") else "none"
    max_positions = int(re.search(r"max (\d+) events", positions).group(1)) if encoding != "none" else 200
    if facts["decoding head"] != "tied to the input item embeddings" or not facts["training loss"].startswith("full"):
        raise ValueError("only tied-head, full-softmax cards are reconstructed; train the run again")
    return GenRecConfig.from_preset(
        facts["preset"], vocab_size=int(facts["catalog (items)"].replace(",", "")) + 1,
        num_hidden_layers=int(facts["decoder blocks"].split()[0]), hidden_size=int(facts["width d"]),
        num_attention_heads=int(facts["attention heads"]), intermediate_size=int(intermediate), mlp_type=mlp,
        hidden_act=act, norm_type=re.search(r"pre-norm (\w+)", facts["decoder blocks"]).group(1),
        position_encoding=encoding, max_position_embeddings=max_positions,
        num_time_buckets=int(re.search(r"\d+", facts["time-gap buckets"]).group()),
        num_action_types=int(re.search(r"\d+", facts["action types"]).group()), tie_word_embeddings=True,
        loss_type="full")


def _metrics(card: ModelCard) -> dict:
    metrics: dict = {"dataset": card.data.datasets[0],
                     "protocol": re.search(r"^## Evaluation protocol\n\n(.+?)\.\n", card.text, re.M).group(1)}
    for result in card.data.eval_results:
        metrics.setdefault("task", result.task_name)
        metrics.setdefault(result.dataset_split, {})[result.metric_type] = result.metric_value
    header = next(line for line in card.text.splitlines() if line.startswith("| task | dataset | split |"))
    names = [name.strip().lower() for name in header.strip("|").split("|")[3:]]
    for line in card.text.splitlines():
        if "(most-popular baseline)" in line:
            cells = [cell.strip() for cell in line.strip("|").split("|")]
            metrics.setdefault("popularity_baseline", {})[cells[2]] = {
                name: float(value) for name, value in zip(names, cells[3:]) if value}
    return metrics


def rerender(path: Path) -> str:
    """The card at `path` rendered again by today's template from the facts it records (checked unchanged)."""
    old = ModelCard.load(path)
    recipe = yaml.safe_load(re.search(r"^```yaml\n(.*?)^```", old.text, re.S | re.M).group(1))
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        _config(old).save_pretrained(folder)
        (folder / "metrics.json").write_text(json.dumps(_metrics(old)))
        (folder / "training_recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
        new = build_model_card(folder, repo_id=old.data.model_name)
    checks = {"architecture": lambda card: ARCHITECTURE.search(card.text).group(1),
              "recorded numbers": lambda card: sorted((r.task_name, r.dataset_split, r.metric_type, r.metric_value)
                                                      for r in card.data.eval_results),
              "recipe": lambda card: re.search(r"^```yaml\n(.*?)^```", card.text, re.S | re.M).group(1)}
    for what, read in checks.items():
        if read(new) != read(old):
            raise ValueError(f"{path}: the re-rendered {what} differs from the card's; the reconstruction is not "
                             "the run (train it again and run `genrec-hf card`).")
    return str(new)


if __name__ == "__main__":
    for name in sys.argv[1:]:
        text = rerender(Path(name))
        Path(name).write_text(text if text.endswith("\n") else text + "\n")
        print(f"re-rendered {name}")
