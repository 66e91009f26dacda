"""Decoding head + loss, forward + backward: full softmax vs sampled (1 % uniform negatives) vs sampled + projected.

Each case runs in its own subprocess so its peak resident memory (ru_maxrss) is its own. The measured code is the
package's: `GenRecForNextItemPrediction.loss_sum` (decoding head + configured loss) on N supervised positions of
hidden states; the item table and its gradient are part of the memory, as in training.

    python benchmarks/bench_head.py --tokens 256 --out benchmarks/out/head
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
    "full": dict(loss_type="full"),
    "sampled": dict(loss_type="sampled", negatives_fraction=0.01, min_negatives=1),
    "sampled+projected": dict(loss_type="sampled", negatives_fraction=0.01, min_negatives=1,
                              head_projection_ratio=8, tie_word_embeddings=False),
}


def run_case(head: str, items: int, dim: int, tokens: int, repeats: int) -> dict:
    """One measurement (called in a fresh subprocess)."""
    import torch

    from genrec_hf import GenRecConfig
    from genrec_hf.flops import flops_per_token
    from genrec_hf.modeling_genrec import GenRecDecodingHead
    from genrec_hf.losses import full_softmax_loss, sample_uniform_negatives, sampled_softmax_loss

    torch.manual_seed(0)
    overrides = dict(HEADS[head])
    overrides.setdefault("tie_word_embeddings", False)
    config = GenRecConfig(vocab_size=items + 1, hidden_size=dim, num_attention_heads=8, intermediate_size=dim,
                          **overrides)
    module = GenRecDecodingHead(config)
    hidden = torch.randn(tokens, dim, requires_grad=True)
    targets = torch.randint(1, items + 1, (tokens,))
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def step() -> None:
        queries = module(hidden)
        if config.loss_type == "full":
            loss = full_softmax_loss(queries, module.item_vectors, targets)
        else:
            negatives = sample_uniform_negatives(config.vocab_size, (config.resolved_num_negatives,),
                                                 device=hidden.device)
            loss = sampled_softmax_loss(queries, module.item_vectors, targets, negatives)
        loss.backward()
        module.zero_grad(set_to_none=False)
        hidden.grad = None

    step()  # warm-up (allocations, kernels)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    flops = flops_per_token(config, head={"full": "full", "sampled": "sampled"}.get(head, "sampled+projected"),
                            num_items=items, backbone_flops=0.0)
    return {"head": head, "items": items, "dim": dim, "tokens": tokens, "seconds": sorted(times)[len(times) // 2],
            "peak_rss_mib": peak_mib, "baseline_rss_mib": rss_before / 1024,
            "head_flops_per_token": flops["total"], "negatives": config.resolved_num_negatives}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--dims", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--tokens", type=int, default=256, help="supervised positions per step")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/head"))
    parser.add_argument("--case", nargs=3, metavar=("HEAD", "ITEMS", "DIM"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        head, items, dim = args.case
        print(json.dumps(run_case(head, int(items), int(dim), args.tokens, args.repeats)))
        return

    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for dim in args.dims:
        for items in args.items:
            for head in HEADS:
                command = [sys.executable, __file__, "--case", head, str(items), str(dim), "--tokens",
                           str(args.tokens), "--repeats", str(args.repeats)]
                done = subprocess.run(command, capture_output=True, text=True)
                if done.returncode != 0:
                    print(f"{head} V={items} d={dim} failed: {done.stderr[-500:]}", file=sys.stderr)
                    continue
                results.append(json.loads(done.stdout.strip().splitlines()[-1]))
                print(results[-1], flush=True)
                (args.out / "results.json").write_text(json.dumps(results, indent=2))
    write_report(results, args)


def write_report(results: list[dict], args: argparse.Namespace) -> None:
    full = {(r["items"], r["dim"]): r for r in results if r["head"] == "full"}
    lines = [f"Date {date.today()}; {args.tokens} supervised positions per step; median of {args.repeats} steps; "
             "peak RSS of the case's own process (item table + gradients + logits).", "",
             "| d | V | head | negatives | head FLOPs/token | FLOPs ÷ | time (s) | speedup | peak RSS (MiB) | memory ÷ |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        base = full.get((r["items"], r["dim"]))
        flops_x = base["head_flops_per_token"] / r["head_flops_per_token"] if base else float("nan")
        speed_x = base["seconds"] / r["seconds"] if base else float("nan")
        mem_x = base["peak_rss_mib"] / r["peak_rss_mib"] if base else float("nan")
        lines.append(f"| {r['dim']} | {r['items']:.0e} | {r['head']} | {r['negatives'] if r['head'] != 'full' else '-'}"
                     f" | {r['head_flops_per_token']:.3g} | {flops_x:.1f}× | {r['seconds']:.4f} | {speed_x:.1f}× | "
                     f"{r['peak_rss_mib']:.0f} | {mem_x:.1f}× |")
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    plot(results, args.out / "head_speedup.png")


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    full = {(r["items"], r["dim"]): r["seconds"] for r in results if r["head"] == "full"}
    fig, ax = plt.subplots(figsize=(6, 4))
    for head in ("sampled", "sampled+projected"):
        for dim in sorted({r["dim"] for r in results}):
            rows = sorted((r for r in results if r["head"] == head and r["dim"] == dim and (r["items"], dim) in full),
                          key=lambda r: r["items"])
            if rows:
                ax.plot([r["items"] for r in rows], [full[(r["items"], dim)] / r["seconds"] for r in rows],
                        marker="o", label=f"{head}, d={dim}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("catalog size V")
    ax.set_ylabel("speed-up over full softmax (fwd+bwd)")
    ax.set_title("Decoding head + loss on CPU")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
