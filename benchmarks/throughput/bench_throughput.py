"""Training throughput in real events per second, the padding fraction, and achieved FLOP/s against a measured peak.

For each (dataset, preset, batching) the real training rows (leave-one-out train split cut into windows of
`max_length`, the rows `genrec-hf train` trains on) are batched exactly as training batches them under that
`data.batching` mode, and `--steps` full training steps (forward, backward, AdamW) are timed after `--warmup` steps:

- padded: random batches, each padded to its longest row;
- grouped: Trainer's `LengthGroupedSampler` over the windows' length column, then padded;
- packed: the same random batches as padded, packed several windows per row (`NextItemCollator(packing=True)`).

Reported per case:

- real events/s: non-padding input events processed per second (padded tokens/s is the number that hides padding);
- padding fraction: share of the batch's (B × T) input positions that are padding;
- model FLOP/s: `genrec_hf.scaling.flops` FLOPs per real event (backbone at the batch's mean real context length
  + decoding head + loss, strict matmul count, head factor 6) × real events/s;
- MFU: model FLOP/s ÷ the peak of the same machine, measured in the same run by a float32 GEMM probe
  (`--probe_size` square matmuls on the same threads).

`--tweaks` adds the cheap wins a profile asks about as another axis, each a switch a recipe already has:
`fp32` (the default), `bf16` (`torch.autocast("cpu", bfloat16)`, what `training.bf16: true` does on a CPU) and
`compile` (`torch.compile(model, dynamic=True)`, what `training.torch_compile: true` does; its compile time is in
the warm-up, not the timed steps). `--eval_cost` also times one full-catalog validation pass over every user
(what each epoch's evaluation costs) beside the time of one training epoch at the measured rate.

    python benchmarks/throughput/bench_throughput.py --datasets /path/to/ml-100k:200 /path/to/Toys_and_Games.txt:50 \\
        --presets sasrec genrec-100k genrec-500k genrec-2m --batching padded grouped packed --threads 1 --steps 20
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import time
from datetime import date
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DATASETS = [f"{ROOT.parent / 'shared/data/ml-100k'}:200",
                    f"{ROOT.parent / 'shared/data/amazon-toys/Toys_and_Games.txt'}:50"]


def gemm_peak(size: int, repeats: int = 10) -> float:
    """Best observed float32 FLOP/s of a (size × size) @ (size × size) matmul on the current threads."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2.0 * size**3 / best


def _head_name(config) -> str:
    """The `genrec_hf.scaling.flops` head name of a config."""
    sampled, projected = config.loss_type == "sampled", config.head_projection_ratio is not None
    return {(False, False): "full", (True, False): "sampled", (False, True): "projected",
            (True, True): "sampled+projected"}[(sampled, projected)]


def history_lengths(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Real events of each history of a batch: one per row, or one per packed segment (`position_ids`)."""
    mask = batch["attention_mask"].bool()
    if "position_ids" not in batch:
        return mask.sum(dim=1)
    segments = ((batch["position_ids"] == 0) & mask).long().cumsum(dim=1)
    keys = (segments + torch.arange(mask.shape[0])[:, None] * (mask.shape[1] + 1))[mask]
    return torch.unique(keys, return_counts=True)[1]


def run_case(source: str, max_length: int, preset: str, batch_size: int, steps: int, warmup: int,
             seed: int, batching: str = "padded", tweak: str = "fp32", eval_cost: bool = False) -> dict:
    """Time `steps` training steps of `preset` on the real training windows of `source`, batched as `batching`."""
    from torch.utils.data import DataLoader
    from transformers.trainer_pt_utils import LengthGroupedSampler

    from genrec_hf import GenRecConfig, GenRecForNextItemPrediction, SIZE_PRESETS
    from genrec_hf.data import NextItemCollator, leave_one_out, load_interactions, sliding_windows
    from genrec_hf.data.collators import LENGTH_COLUMN, with_lengths
    from genrec_hf.scaling.flops import flops_per_token

    torch.manual_seed(seed)
    random.seed(seed)
    data = load_interactions(source)
    windows = sliding_windows(leave_one_out(data)["train"], max_length)
    overrides = {"vocab_size": len(data.vocab), "max_position_embeddings": max_length}
    if "num_action_types" not in SIZE_PRESETS[preset]:
        overrides["num_action_types"] = data.num_action_types
    model = GenRecForNextItemPrediction(GenRecConfig.from_preset(preset, **overrides)).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    forward = torch.compile(model, dynamic=True) if tweak == "compile" else model
    collator = NextItemCollator(max_length, packing=batching == "packed")
    generator = torch.Generator().manual_seed(seed)
    if batching == "grouped":
        lengths = with_lengths(windows, max_length)[LENGTH_COLUMN]
        sampler = LengthGroupedSampler(batch_size, lengths=list(lengths), generator=generator)
        loader = DataLoader(windows, batch_size=batch_size, sampler=sampler, collate_fn=collator)
    else:
        loader = DataLoader(windows, batch_size=batch_size, shuffle=True, collate_fn=collator, generator=generator)
    batches = iter(loader)
    seconds = real = padded = supervised = context = rows = 0.0
    for step in range(warmup + steps):
        try:
            batch = next(batches)
        except StopIteration:
            batches = iter(loader)
            batch = next(batches)
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=tweak == "bf16"):
            loss = forward(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step >= warmup:
            seconds += time.perf_counter() - start
            mask = batch["attention_mask"]
            real += float(mask.sum())
            padded += float(mask.numel())
            rows += mask.shape[0]
            supervised += float((batch["labels"] != -100).sum())
            context += float(history_lengths(batch).pow(2).sum())  # Σ T²: attention cost ∝ T per event
    # The package's convention counts attention as 12·L·T·d per event with T its history's real length, so the
    # batch's effective T is Σ T² / Σ T (padding is not useful work).
    per_event = flops_per_token(model.config, head=_head_name(model.config), seq_len=max(1, round(context / real)),
                                head_factor=6.0)
    # Head + loss run once per supervised position, the backbone once per real event.
    flops = per_event["backbone"] * real + (per_event["head"] + per_event["loss"]) * supervised
    extra = {}
    if eval_cost:
        extra = {"epoch_seconds": float(sum(with_lengths(windows, max_length)[LENGTH_COLUMN])) / (real / seconds),
                 "eval_seconds": validation_seconds(model, leave_one_out(data)["validation"], max_length)}
    return {"dataset": data.name, "preset": preset, "batching": batching, "tweak": tweak, **extra,
            "max_length": max_length,
            "batch_size": batch_size, "rows_per_step": rows / steps,
            "steps": steps, "seconds": seconds, "real_events_per_s": real / seconds,
            "padded_tokens_per_s": padded / seconds, "padding_fraction": 1.0 - real / padded,
            "model_flops_per_s": flops / seconds, "flops_per_real_event": flops / real}


def validation_seconds(model: torch.nn.Module, rows, max_length: int) -> float:
    """Seconds of one full-catalog ranking pass over `rows`, as each epoch's evaluation runs it."""
    from torch.utils.data import DataLoader

    from genrec_hf.data import NextItemCollator
    from genrec_hf.evaluation import evaluate_model

    start = time.perf_counter()
    evaluate_model(model, DataLoader(rows, batch_size=256, collate_fn=NextItemCollator(max_length, mode="eval")))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=DEFAULT_DATASETS, help="SOURCE:MAX_LENGTH pairs")
    parser.add_argument("--presets", nargs="+", default=["sasrec", "genrec-100k", "genrec-500k", "genrec-2m"])
    parser.add_argument("--batching", nargs="+", default=["padded", "grouped", "packed"],
                        choices=["padded", "grouped", "packed"], help="data.batching modes, measured in one run")
    parser.add_argument("--tweaks", nargs="+", default=["fp32"], choices=["fp32", "bf16", "compile"],
                        help="precision / compilation switches, measured in one run")
    parser.add_argument("--eval_cost", action="store_true",
                        help="also time one validation pass against one training epoch")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per case")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (one process per core)")
    parser.add_argument("--probe_size", type=int, default=1024, help="side of the GEMM peak probe")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "throughput")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    peak = gemm_peak(args.probe_size)
    rows = []
    for spec in args.datasets:
        source, _, length = spec.rpartition(":")
        for preset in args.presets:
            for batching in args.batching:
                for tweak in args.tweaks:
                    row = run_case(source, int(length), preset, args.batch_size, args.steps, args.warmup, args.seed,
                                   batching, tweak, args.eval_cost)
                    row["mfu"] = row["model_flops_per_s"] / peak
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    lines = [f"{date.today()}, {platform.machine()}, {os.cpu_count()} CPUs, {args.threads} thread(s), load average "
             f"{load} at the end, torch {torch.__version__}; GEMM peak {peak / 1e9:.1f} GFLOP/s "
             f"({args.probe_size}² float32).", "",
             "| dataset | preset | batching | tweak | max len | real events/s | padded tokens/s | padding | GFLOP/s | MFU "
             "| epoch / eval (s) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        cost = f"{r['epoch_seconds']:.1f} / {r['eval_seconds']:.1f}" if "eval_seconds" in r else "–"
        lines.append(f"| {r['dataset']} | {r['preset']} | {r['batching']} | {r['tweak']} | {r['max_length']} | "
                     f"{r['real_events_per_s']:,.0f} | "
                     f"{r['padded_tokens_per_s']:,.0f} | {r['padding_fraction']:.0%} | "
                     f"{r['model_flops_per_s'] / 1e9:.2f} | {r['mfu']:.1%} | {cost} |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    (args.out / "results.json").write_text(json.dumps({"gemm_peak_flops": peak, "rows": rows}, indent=2))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
