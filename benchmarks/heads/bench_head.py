"""Decoding head + loss, forward + backward: full softmax vs sampled (1 % uniform negatives) vs sampled + projected (r=8).

What is measured is the package's own code: `GenRecDecodingHead` (identity or act → Linear(d, d/8)) and
`losses.full_softmax_loss` / `losses.sampled_softmax_loss` with `losses.sample_negatives` (one negative set
shared by the batch, as `GenRecForNextItemPrediction.loss_sum` does with `negative_sharing="batch"`), on N supervised
positions of random hidden states. The item table (V × d_out) and its dense gradient are part of the cost, as in
training; the optimizer step is not.

Method:
  * time: median wall clock of `--repeats` forward+backward steps after one warm-up step, `--threads` intra-op
    threads; gradients are reset with `set_to_none=True` outside the timed region.
  * memory: every case runs in its own fresh subprocess; peak RSS (`ru_maxrss`) of that process minus its RSS after
    importing torch + genrec_hf and before building anything = the case's peak (parameters, gradients, activations).
    torch's CPU allocator returns large blocks to the OS, so this is the high-water mark of the step itself.
  * FLOPs: `genrec_hf.scaling.flops.flops_per_token(..., backbone_flops=0)` (head + loss only), in the strict matmul
    convention (`head_factor=6`, = what the kernels execute) and, for the ratio, the paper's (`head_factor=12`).

    python benchmarks/heads/bench_head.py --tokens 256 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

HEADS = {
    "full": dict(loss_type="full"),
    "sampled": dict(loss_type="sampled"),
    "sampled+projected": dict(loss_type="sampled", head_projection_ratio=8),
}


def run_case(head: str, items: int, dim: int, tokens: int, repeats: int, threads: int) -> dict:
    """One measurement; meant to run in a fresh subprocess so ru_maxrss is this case's own."""
    import torch

    from genrec_hf import GenRecConfig
    from genrec_hf.scaling.flops import flops_per_token
    from genrec_hf.models.genrec.losses import full_softmax_loss, sample_negatives, sampled_softmax_loss
    from genrec_hf.models.genrec.modeling_genrec import GenRecDecodingHead

    torch.set_num_threads(threads)
    rss_base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    torch.manual_seed(0)
    config = GenRecConfig(vocab_size=items + 1, hidden_size=dim, num_attention_heads=8, intermediate_size=dim,
                          tie_word_embeddings=False, negatives_fraction=0.01, min_negatives=1, **HEADS[head])
    module = GenRecDecodingHead(config)
    hidden = torch.randn(tokens, dim, requires_grad=True)
    targets = torch.randint(1, items + 1, (tokens,))

    def step() -> None:
        queries = module(hidden)
        if config.loss_type == "full":
            loss = full_softmax_loss(queries, module.item_vectors, targets)
        else:
            negatives = sample_negatives(config.vocab_size, (config.resolved_num_negatives,),
                                                 device=hidden.device)
            loss = sampled_softmax_loss(queries, module.item_vectors, targets, negatives,
                                        remove_accidental_hits=config.remove_accidental_hits)
        loss.backward()

    times = []
    for i in range(repeats + 1):
        module.zero_grad(set_to_none=True)
        hidden.grad = None
        start = time.perf_counter()
        step()
        if i:  # the first step is a warm-up
            times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    name = "sampled+projected" if head == "sampled+projected" else head
    strict = flops_per_token(config, head=name, num_items=items, seq_len=1, backbone_flops=0.0, head_factor=6.0)
    paper = flops_per_token(config, head=name, num_items=items, seq_len=1, backbone_flops=0.0)
    seconds = sorted(times)[len(times) // 2]
    return {"head": head, "items": items, "dim": dim, "d_out": config.head_output_size, "tokens": tokens,
            "negatives": config.resolved_num_negatives if config.loss_type == "sampled" else None,
            "seconds": seconds, "all_seconds": times, "peak_mib": (peak - rss_base) / 1024,
            "base_rss_mib": rss_base / 1024, "flops_per_token": strict["total"],
            "paper_flops_per_token": paper["total"],
            "gflops_per_s": strict["total"] * tokens / seconds / 1e9}


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, nargs="+", default=[10_000, 100_000, 1_000_000], help="catalog sizes V")
    parser.add_argument("--dims", type=int, nargs="+", default=[256, 1024], help="hidden sizes d")
    parser.add_argument("--heads", nargs="+", default=list(HEADS), choices=list(HEADS))
    parser.add_argument("--tokens", type=int, default=256, help="supervised positions N per step")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per case (median reported)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads per case")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/head"), help="raw results.json folder")
    parser.add_argument("--report", type=Path, default=Path("benchmarks/out/head/results_head.md"))
    parser.add_argument("--plot", type=Path, default=Path("benchmarks/plots/head_speedup.png"))
    parser.add_argument("--from-json", type=Path, help="rebuild report and plot from a saved results.json")
    parser.add_argument("--case", nargs=3, metavar=("HEAD", "ITEMS", "DIM"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        head, items, dim = args.case
        print(json.dumps(run_case(head, int(items), int(dim), args.tokens, args.repeats, args.threads)))
        return

    if args.from_json:
        saved = json.loads(args.from_json.read_text())
        write_report(saved["results"], args, saved["info"])
        plot(saved["results"], args.plot)
        return

    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    load_before, started = load(), time.time()
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for dim in args.dims:
        for items in args.items:
            for head in args.heads:
                case = [sys.executable, __file__, "--case", head, str(items), str(dim), "--tokens", str(args.tokens),
                        "--repeats", str(args.repeats), "--threads", str(args.threads)]
                done = subprocess.run(case, capture_output=True, text=True)
                if done.returncode != 0:
                    print(f"{head} V={items} d={dim} failed: {done.stderr[-800:]}", file=sys.stderr)
                    continue
                results.append(json.loads(done.stdout.strip().splitlines()[-1]))
                r = results[-1]
                print(f"d={dim} V={items:.0e} {head:18s} {r['seconds']:.4f}s peak {r['peak_mib']:.0f} MiB "
                      f"({r['gflops_per_s']:.1f} GFLOP/s)  load {load()}", flush=True)
                (args.out / "results.json").write_text(json.dumps(results, indent=2))
    from genrec_hf.training.throughput import machine_summary

    info = {"command": command, "machine": machine_summary(), "load_before": load_before, "load_after": load(),
            "minutes": (time.time() - started) / 60, "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    (args.out / "results.json").write_text(json.dumps({"info": info, "results": results}, indent=2))
    write_report(results, args, info)
    plot(results, args.plot)


def write_report(results: list[dict], args: argparse.Namespace, info: dict) -> None:
    full = {(r["items"], r["dim"]): r for r in results if r["head"] == "full"}
    lines = [
        "# Decoding head + loss: full vs sampled vs sampled + projected (CPU)", "",
        f"- Date: {info['date']}; total run {info['minutes']:.1f} min",
        f"- Machine: {info['machine']}",
        f"- Load average (1/5/15 min) before: {info['load_before']}; after: {info['load_after']}",
        f"- Command: `{info['command']}`",
        f"- N = {args.tokens} supervised positions per step, {args.threads} intra-op thread(s), median of "
        f"{args.repeats} timed forward+backward steps after one warm-up; one fresh process per case.",
        "- Sampled: uniform negatives = 1 % of the catalog, one set shared by the batch, accidental hits removed; "
        "projected: SiLU → Linear(d, d/8), item table d/8 wide.",
        "- Peak memory: ru_maxrss of the case's process minus its RSS after imports (item table + its gradient + "
        "activations and their gradients).",
        "- FLOPs/token: `genrec_hf.scaling.flops` head + loss only, strict matmul convention (6·d_out·V_eff); the "
        "\"paper FLOPs ÷\" column uses the paper's 12·d_out·V_eff (same ratio up to the projection/loss terms).", "",
        "| d | V | head | negatives | FLOPs/token | FLOPs ÷ | paper FLOPs ÷ | time (s) | speed-up | GFLOP/s | "
        "peak (MiB) | memory ÷ |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        base = full.get((r["items"], r["dim"]))
        ratio = (lambda key: base[key] / r[key]) if base else (lambda key: float("nan"))
        mem_x = base["peak_mib"] / r["peak_mib"] if base and r["peak_mib"] > 0 else float("nan")
        lines.append(
            f"| {r['dim']} | {r['items']:.0e} | {r['head']} | {r['negatives'] or '-'} | {r['flops_per_token']:.3g} | "
            f"{ratio('flops_per_token'):.1f}× | {ratio('paper_flops_per_token'):.1f}× | {r['seconds']:.4f} | {base['seconds'] / r['seconds'] if base else float('nan'):.1f}× | "
            f"{r['gflops_per_s']:.1f} | {r['peak_mib']:.0f} | {mem_x:.1f}× |")
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    full = {(r["items"], r["dim"]): r for r in results if r["head"] == "full"}
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for head, style in (("sampled", "o-"), ("sampled+projected", "s-")):
        for dim in sorted({r["dim"] for r in results}):
            rows = sorted((r for r in results if r["head"] == head and r["dim"] == dim and (r["items"], dim) in full),
                          key=lambda r: r["items"])
            if rows:
                (line,) = ax.plot([r["items"] for r in rows],
                                  [full[(r["items"], dim)]["seconds"] / r["seconds"] for r in rows],
                                  style, label=f"{head}, d={dim}: measured")
                ax.plot([r["items"] for r in rows],
                        [full[(r["items"], dim)]["flops_per_token"] / r["flops_per_token"] for r in rows],
                        style[0] + ":", color=line.get_color(), alpha=0.6, label=f"{head}, d={dim}: FLOPs ratio")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("catalog size V")
    ax.set_ylabel("speed-up over full softmax (head + loss, fwd + bwd)")
    ax.set_title("genrec_hf decoding head on CPU")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
