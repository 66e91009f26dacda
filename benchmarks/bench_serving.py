"""Serving latency and throughput: in-process vs over HTTP, exact vs approximate top-k, batch 1 vs 64.

A bounded local load test. For each preset and catalog size an UNTRAINED model of the preset's size is built
(latency depends on the shapes, not the weights; recall of an approximate index on untrained vectors is a
pessimistic figure, trained item spaces are more clustered). Each case sends a fixed number of requests AND stops
after `--max_seconds`, whichever comes first; the HTTP cases talk to a uvicorn server on 127.0.0.1 only, started
and stopped by the script. Reported per case: p50/p95/p99 latency per request, requests/s and histories/s, and
for approximate cases recall@k against exact top-k on the same histories.

    python benchmarks/bench_serving.py --presets genrec-100k,genrec-2m --items 10000,100000 \\
        --requests 200 --max_seconds 30 --out benchmarks/out/serving

Needs the `serve` and `ann` extras (pip install "genrec-hf[serve,ann]" httpx). Run it on a quiet machine: other
processes on the CPU dominate these numbers.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import date
from pathlib import Path


def _percentiles(values: list[float]) -> dict[str, float]:
    import numpy as np

    ms = np.asarray(values) * 1000
    return {"p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
            "p99_ms": float(np.percentile(ms, 99))}


def _recommender(preset: str, items: int, length: int, index: str, options: dict | None = None):
    import torch

    from genrec_hf import GenRecConfig, GenRecForNextItemPrediction
    from genrec_hf.data import ItemVocab
    from genrec_hf.serving import Recommender

    torch.manual_seed(0)
    config = GenRecConfig.from_preset(preset, vocab_size=items + 1, max_position_embeddings=max(length, 8))
    model = GenRecForNextItemPrediction(config).eval()
    vocab = ItemVocab([str(i) for i in range(1, items + 1)])
    return Recommender(model, vocab, index=None if index == "exact" else index, index_options=options)


def _histories(items: int, length: int, count: int, seed: int) -> list[list[str]]:
    import numpy as np

    rng = np.random.default_rng(seed)
    return [[str(i) for i in rng.integers(1, items + 1, length)] for _ in range(count)]


def run_case(recommender, *, mode: str, batch: int, k: int, length: int, requests: int, max_seconds: float,
             client=None) -> dict:
    """Send up to `requests` requests of `batch` histories each, stopping after `max_seconds`."""
    items = recommender.num_items
    pool = _histories(items, length, batch * 8, seed=1)
    latencies: list[float] = []
    started = time.perf_counter()
    for n in range(requests):
        rows = [pool[(n * batch + j) % len(pool)] for j in range(batch)]
        begin = time.perf_counter()
        if mode == "in-process":
            recommender.recommend(rows if batch > 1 else rows[0], k)
        else:
            body = {"histories": rows, "k": k} if batch > 1 else {"history": rows[0], "k": k}
            client.post("/recommend", json=body).raise_for_status()
        latencies.append(time.perf_counter() - begin)
        if time.perf_counter() - started > max_seconds:
            break
    elapsed = time.perf_counter() - started
    return {"requests": len(latencies), "seconds": elapsed, "requests_per_s": len(latencies) / elapsed,
            "histories_per_s": len(latencies) * batch / elapsed, **_percentiles(latencies)}


def recall(recommender, exact, *, k: int, length: int, count: int = 64) -> float:
    from genrec_hf.serving.index import recall_at_k
    import torch

    histories = _histories(recommender.num_items, length, count, seed=2)
    got = recommender.recommend(histories, k)
    want = exact.recommend(histories, k)
    encode = recommender.vocab.encode
    return recall_at_k(torch.tensor([[encode(r.item_id) for r in row] for row in got]),
                       torch.tensor([[encode(r.item_id) for r in row] for row in want]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", default="genrec-100k,genrec-2m", help="comma-separated preset names")
    parser.add_argument("--items", default="10000,100000", help="comma-separated catalog sizes")
    parser.add_argument("--topk", default="exact,ivf,hnsw", help="comma-separated: exact, ivf, hnsw, flat")
    parser.add_argument("--modes", default="in-process,http", help="comma-separated: in-process, http")
    parser.add_argument("--batches", default="1,64", help="comma-separated histories per request")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--length", type=int, default=50, help="events per history")
    parser.add_argument("--requests", type=int, default=200, help="requests per case (upper bound)")
    parser.add_argument("--max_seconds", type=float, default=30.0, help="time limit per case (upper bound)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--nprobe", type=int, default=None, help="IVF lists searched (default nlist/4)")
    parser.add_argument("--ef_search", type=int, default=64, help="HNSW candidates searched")
    parser.add_argument("--out", default=None, help="folder for results.json and results.md")
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    modes = args.modes.split(",")
    rows = []
    for preset in args.presets.split(","):
        for items in (int(n) for n in args.items.split(",")):
            exact = None
            for topk in args.topk.split(","):
                build = time.perf_counter()
                options = {"ivf": {"nprobe": args.nprobe}, "hnsw": {"ef_search": args.ef_search}}.get(topk)
                recommender = _recommender(preset, items, args.length, topk, options)
                recommender.index()  # build the index outside the timed requests
                build = time.perf_counter() - build
                exact = exact or (recommender if topk == "exact" else _recommender(preset, items, args.length,
                                                                                   "exact"))
                quality = 1.0 if topk == "exact" else recall(recommender, exact, k=args.k, length=args.length)
                server = client = None
                if "http" in modes:
                    import httpx

                    from genrec_hf.serving.server import ServerThread, create_app

                    server = ServerThread(create_app(recommender, max_body_bytes=64 << 20)).__enter__()
                    client = httpx.Client(base_url=server.url, timeout=120)
                try:
                    for mode in modes:
                        for batch in (int(b) for b in args.batches.split(",")):
                            result = run_case(recommender, mode=mode, batch=batch, k=args.k, length=args.length,
                                              requests=args.requests, max_seconds=args.max_seconds, client=client)
                            row = {"preset": preset, "items": items, "topk": topk, "mode": mode, "batch": batch,
                                   "recall@k": quality, "build_s": build, **result}
                            rows.append(row)
                            print(json.dumps(row), flush=True)
                finally:
                    if client is not None:
                        client.close()
                    if server is not None:
                        server.__exit__(None, None, None)

    header = ("| preset | items | top-k | mode | batch | p50 ms | p95 ms | p99 ms | req/s | histories/s | "
              f"recall@{args.k} | requests |")
    lines = [f"# Serving latency ({date.today()}, untrained models of the preset sizes, {args.length}-event "
             "histories, loopback HTTP)", "", header, "|" + "---|" * 12]
    for r in rows:
        lines.append(f"| {r['preset']} | {r['items']:,} | {r['topk']} | {r['mode']} | {r['batch']} | "
                     f"{r['p50_ms']:.2f} | {r['p95_ms']:.2f} | {r['p99_ms']:.2f} | {r['requests_per_s']:.1f} | "
                     f"{r['histories_per_s']:.1f} | {r['recall@k']:.3f} | {r['requests']} |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(rows, indent=2))
        (out / "results.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
