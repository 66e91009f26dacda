"""End-to-end training throughput at a 1e6-item catalog: full softmax vs sampled + projected head.

A GenRec preset is trained (AdamW, forward + backward + step) on batches of histories over a synthetic catalog of
`--items` items; item ids are uniform, which does not change the cost of a step. Reported: tokens/s and peak RSS
for each head, in the same run. The full softmax needs a batch × V logit matrix and a dense V × d gradient each
step; the sampled + projected head scores 1 % of the catalog in a d/8-wide space.

    python benchmarks/heads/bench_large_catalog.py --preset genrec-2m --items 1000000 --out benchmarks/out/large_catalog
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

HEADS = {
    "full softmax": dict(loss_type="full"),
    "sampled 1% + projected d/8": dict(loss_type="sampled", negatives_fraction=0.01, head_projection_ratio=8,
                                       tie_word_embeddings=False),
}


def run_case(head: str, preset: str, items: int, batch: int, length: int, steps: int) -> dict:
    import torch

    from genrec_hf import GenRecConfig, GenRecForNextItemPrediction

    torch.manual_seed(0)
    config = GenRecConfig.from_preset(preset, vocab_size=items + 1, max_position_embeddings=length,
                                      **HEADS[head])
    model = GenRecForNextItemPrediction(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    times = []
    for step in range(steps + 1):
        events = torch.randint(1, items + 1, (batch, length + 1))
        start = time.perf_counter()
        loss = model(input_ids=events[:, :-1], labels=events[:, 1:]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step:  # the first step allocates optimizer state
            times.append(time.perf_counter() - start)
    seconds = sum(times) / len(times)
    return {"head": head, "preset": preset, "items": items, "tokens_per_step": batch * length,
            "seconds_per_step": seconds, "tokens_per_second": batch * length / seconds,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "parameters": sum(p.numel() for p in model.parameters())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="genrec-2m")
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=50)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/large_catalog"))
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args.preset, args.items, args.batch, args.length, args.steps)))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for head in HEADS:
        done = subprocess.run([sys.executable, __file__, "--case", head, "--preset", args.preset, "--items",
                               str(args.items), "--batch", str(args.batch), "--length", str(args.length), "--steps",
                               str(args.steps)], capture_output=True, text=True)
        if done.returncode != 0:
            print(f"{head}: failed\n{done.stderr[-1500:]}", file=sys.stderr)
            continue
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    lines = [f"Date {date.today()}; {args.preset}, V = {args.items:,}, {args.batch} × {args.length} events per step, "
             f"mean of {args.steps} steps after one warm-up (AdamW step included).", "",
             "| head | parameters | s / step | tokens / s | peak RSS (MiB) |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['head']} | {r['parameters']:,} | {r['seconds_per_step']:.2f} | "
                     f"{r['tokens_per_second']:.0f} | {r['peak_rss_mib']:.0f} |")
    if len(rows) == 2:
        lines.append(f"\nThroughput ratio: {rows[1]['tokens_per_second'] / rows[0]['tokens_per_second']:.1f}×; "
                     f"memory ratio: {rows[0]['peak_rss_mib'] / rows[1]['peak_rss_mib']:.1f}×.")
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    (args.out / "results.json").write_text(json.dumps(rows, indent=2))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
