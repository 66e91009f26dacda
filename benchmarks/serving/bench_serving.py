"""Serving latency and throughput: cached state vs recompute, exact vs approximate top-k, in-process vs HTTP.

A bounded local load test over UNTRAINED models of the presets' sizes (latency depends on the shapes, not the
weights; recall of an approximate index on untrained vectors is a pessimistic figure, trained item spaces are more
clustered). Every case runs a fixed number of requests AND stops after `--max_seconds`, whichever comes first;
HTTP cases talk to a uvicorn server on 127.0.0.1 only, started and stopped by the script. Parts (`--parts`):

  state      model-level cost of a user's state after one more event: a full recompute of the `--length`-event
             history vs the incremental update (one event attending to the cache), batch 1 and 64; and the
             `Recommender.update` call itself (batch 1, store bookkeeping included)
  topk       exact chunked vs faiss IVF top-k per catalog size, batch 1 and 64, index build time, recall@k
             against exact on the same queries
  ann        IVF recall@k and latency as nprobe grows, on the untrained item space and on a synthetic clustered
             one (the structure a trained space has and an untrained one lacks)
  ann_trained  IVF (nprobe sweep) and HNSW (ef_search sweep) recall@k against exact top-k on TRAINED models
             (`--model_dirs`, each a `genrec-hf train` output folder) for their test users' query vectors (`--data`,
             one source per model): what the index defaults are chosen by
  requests   whole requests at one catalog size, in-process and over loopback HTTP: recommend from a history
             (full recompute), recommend for a known user (cached state), one new event (/events)
  freshness  time until a new item can be recommended: a retrain of that size (measured training steps,
             extrapolated to one epoch over `--epoch_events`) vs putting one new vector into the exact table or the
             IVF index, and a cold-start `add_items` of its metadata (the `add_items` part alone)
  add_items  the cold-start row of `freshness` on its own: one metadata row → `model.add_items` → fused table
  window     a TRAINED model (`--model_dir`, its max_position_embeddings = the recipe's data.max_length): the
             latency of each one-event update of a user's served state (`Recommender.update`, what POST /events
             runs; and over HTTP) while the state fills its window and after, per `--overflow_keeps` (window: a
             rebuild per event past it, the behaviour before the amortised default; half: the default)
  grid       the older grid: presets × catalogs × top-k kinds × modes × batches, recommend from histories

    python benchmarks/serving/bench_serving.py --parts state,topk,requests,freshness \\
        --presets genrec-2m,genrec-8m,genrec-30m --items 10000,100000,1000000 --out benchmarks/out/serving

Every table records `os.getloadavg()` when it was measured. Needs the `serve` and `ann` extras
(pip install "genrec-hf[serve,ann]" httpx). Other processes on the CPU dominate these numbers: say so next to them.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import time
from datetime import datetime, timezone
from pathlib import Path


def _percentiles(values: list[float]) -> dict[str, float]:
    import numpy as np

    ms = np.asarray(values) * 1000
    return {"p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
            "p99_ms": float(np.percentile(ms, 99))}


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} / {five:.2f} / {fifteen:.2f} (1 / 5 / 15 min), {os.cpu_count()} CPUs"


def _timed(fn, *, reps: int, max_seconds: float, warmup: int = 1) -> list[float]:
    """Seconds per call of `fn`: `warmup` untimed calls, then up to `reps` timed ones within `max_seconds`."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    started = time.perf_counter()
    for _ in range(reps):
        begin = time.perf_counter()
        fn()
        times.append(time.perf_counter() - begin)
        if time.perf_counter() - started > max_seconds:
            break
    return times


def _summary(times: list[float], batch: int = 1) -> dict:
    total = sum(times)
    return {"n": len(times), **_percentiles(times), "requests_per_s": len(times) / total,
            "histories_per_s": len(times) * batch / total}


def _model(preset: str, items: int, max_length: int, **overrides):
    import torch

    from genrec_hf import GenRecConfig, GenRecForNextItemPrediction

    torch.manual_seed(0)
    config = GenRecConfig.from_preset(preset, vocab_size=items + 1, max_position_embeddings=max_length,
                                      hidden_dropout_prob=0.0, attention_dropout=0.0, **overrides)
    return GenRecForNextItemPrediction(config).eval()


def _events(items: int, batch: int, length: int, seed: int):
    import torch

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, items + 1, (batch, length), generator=g)
    times = torch.randint(1, 7 * 86400, (batch, length), generator=g).cumsum(dim=1) + 1_600_000_000
    return ids, times


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


def part_state(args) -> list[dict]:
    """Full recompute of an L-event history vs one incremental event, per preset and batch (model level)."""
    import torch

    from genrec_hf.data import ItemVocab
    from genrec_hf.serving import Recommender

    rows = []
    items = 10_000  # the state's cost does not depend on the catalog (no top-k here)
    for preset in args.presets.split(","):
        model = _model(preset, items, args.window)
        for batch in (int(b) for b in args.batches.split(",")):
            ids, times = _events(items, batch, args.length, seed=batch)
            with torch.no_grad():
                full = _timed(lambda: model(ids, timestamps=times), reps=args.reps, max_seconds=args.max_seconds)
                cache = model(ids[:, :-1], timestamps=times[:, :-1], use_cache=True).cache
                saved = (list(cache.keys), list(cache.values), cache.mask, cache.seen, cache.last_timestamp)

                def one_event():
                    model(ids[:, -1:], timestamps=times[:, -1:], cache=cache)
                    # `update` concatenates into new tensors: putting the old ones back rewinds the cache.
                    cache.keys, cache.values = list(saved[0]), list(saved[1])
                    cache.mask, cache.seen, cache.last_timestamp = saved[2:]

                step = _timed(one_event, reps=args.reps * 4, max_seconds=args.max_seconds)
            cache_mb = cache.nbytes / 2**20 / batch
            for mode, measured in (("full recompute", full), ("incremental (1 event)", step)):
                row = {"part": "state", "preset": preset, "batch": batch, "history": args.length, "mode": mode,
                       "cache_mib_per_user": cache_mb, **_summary(measured, batch)}
                rows.append(row)
                print(json.dumps(row), flush=True)
            rows[-1]["speedup_p50"] = rows[-2]["p50_ms"] / rows[-1]["p50_ms"]
        # The Recommender call a service makes (batch 1): store bookkeeping and lock included; the history grows
        # from L to at most L + reps events, all inside the window.
        recommender = Recommender(model, ItemVocab([str(i) for i in range(1, items + 1)]))
        ids, times = _events(items, 1, args.length + args.reps * 4 + 2, seed=7)
        raw, stamps = [str(i) for i in ids[0].tolist()], times[0].tolist()
        recommender.update("u", raw[:args.length - 1], timestamps=stamps[:args.length - 1])
        position = [args.length - 1]

        def update():
            n = position[0]
            recommender.update("u", raw[n:n + 1], timestamps=stamps[n:n + 1])
            position[0] += 1

        measured = _timed(update, reps=min(args.reps * 4, args.window - args.length - 1), max_seconds=args.max_seconds)
        assert recommender.user_states.stats.rebuilds == 1, "the store rebuilt instead of extending"
        row = {"part": "state", "preset": preset, "batch": 1, "history": args.length,
               "mode": "Recommender.update (1 event)", "cache_mib_per_user": cache_mb, **_summary(measured)}
        rows.append(row)
        print(json.dumps(row), flush=True)
        model = recommender = None  # free before the next preset's model exists
        gc.collect()
    return rows


def _ivf_options(items: int, args) -> dict:
    nlist = args.nlist or max(16, min(int(4 * items ** 0.5), 1024))
    return {"nlist": nlist, "nprobe": max(1, int(nlist * args.nprobe_fraction)), "max_train_points": args.train_points}


def part_topk(args) -> list[dict]:
    """Exact chunked vs IVF top-k of the same user embeddings, per preset width and catalog size."""
    from genrec_hf.data import ItemVocab
    from genrec_hf.serving import Recommender
    from genrec_hf.serving.index import recall_at_k

    rows = []
    for preset in args.presets.split(","):
        for items in (int(n) for n in args.items.split(",")):
            model = _model(preset, items, args.window)
            recommender = Recommender(model, ItemVocab([str(i) for i in range(1, items + 1)]), index="ivf",
                                      index_options=_ivf_options(items, args))
            build = time.perf_counter()
            index = recommender.index()
            build = time.perf_counter() - build
            ids, _ = _events(items, 64, 50, seed=3)
            queries = recommender.encode_queries(ids.tolist())  # user embeddings of 50-event histories
            want = recommender.topk(queries, args.k, exact=True).items
            got = recommender.topk(queries, args.k, exact=False).items
            quality = recall_at_k(got, want)
            for batch in (int(b) for b in args.batches.split(",")):
                q = queries[:batch]
                for kind, exact in (("exact", True), ("ivf", False)):
                    measured = _timed(lambda: recommender.topk(q, args.k, exact=exact), reps=args.reps,
                                      max_seconds=args.max_seconds)
                    row = {"part": "topk", "preset": preset, "width": queries.shape[1], "items": items,
                           "topk": kind, "batch": batch, "recall@k": 1.0 if exact else quality,
                           "build_s": 0.0 if exact else build, "nlist": None if exact else index.index.nlist,
                           "nprobe": None if exact else index.nprobe, **_summary(measured, batch)}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
            model = recommender = index = None  # free the catalog before the next one exists
            gc.collect()
    return rows


def _clustered_space(items: int, width: int, queries: int, seed: int = 0):
    """A synthetic item space with the structure trained ones have and untrained ones lack: items in 1,024
    clusters of a rank-32 subspace plus small isotropic noise, queries near random items. A stand-in, not a
    trained model: it shows what an IVF index does when neighbours are clustered."""
    import torch

    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(32, width, generator=g) / 32**0.5
    centers = torch.randn(1024, 32, generator=g) @ basis
    assign = torch.randint(0, 1024, (items,), generator=g)
    vectors = centers[assign] + 0.3 * (torch.randn(items, 32, generator=g) @ basis) \
        + 0.05 * torch.randn(items, width, generator=g)
    near = vectors[torch.randint(0, items, (queries,), generator=g)]
    users = near + 0.3 * (torch.randn(queries, 32, generator=g) @ basis)
    return torch.cat([torch.zeros(1, width), vectors]), users  # row 0 = padding


def part_ann(args) -> list[dict]:
    """Recall@k and latency of IVF against exact top-k as nprobe grows, on the untrained model's item space and
    on a synthetic clustered one (`_clustered_space`), per preset width and catalog size."""
    import torch

    from genrec_hf.models.genrec.scoring import chunked_topk
    from genrec_hf.serving.index import FaissIndex, recall_at_k

    rows = []
    for preset in args.presets.split(","):
        for items in (int(n) for n in args.items.split(",")):
            model = _model(preset, items, args.window)
            ids, _ = _events(items, 64, 50, seed=3)
            with torch.no_grad():
                untrained = (model.item_vectors.detach(), model(ids).user_embeddings)
            spaces = {"untrained model": untrained,
                      "clustered (synthetic)": _clustered_space(items, model.config.head_output_size, 64)}
            model = None
            for space, (vectors, queries) in spaces.items():
                want = chunked_topk(queries, vectors, args.k).items
                exact = _timed(lambda: chunked_topk(queries[:1], vectors, args.k), reps=args.reps,
                               max_seconds=args.max_seconds)
                build = time.perf_counter()
                options = _ivf_options(items, args)
                index = FaissIndex.build(vectors, kind="ivf", nlist=options["nlist"],
                                         max_train_points=options["max_train_points"])
                build = time.perf_counter() - build
                nlist = index.index.nlist
                for nprobe in sorted({max(1, nlist // f) for f in (64, 16, 8, 4, 2)}):
                    index.nprobe = nprobe
                    quality = recall_at_k(index.search(queries, args.k).items, want)
                    measured = _timed(lambda: index.search(queries[:1], args.k), reps=args.reps * 4,
                                      max_seconds=args.max_seconds)
                    row = {"part": "ann", "preset": preset, "width": vectors.shape[1], "items": items,
                           "space": space, "nlist": nlist, "nprobe": nprobe, "recall@k": quality,
                           "build_s": build, "exact_p50_ms": _percentiles(exact)["p50_ms"], **_summary(measured)}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                index = None
                gc.collect()
    return rows


def part_ann_trained(args) -> list[dict]:
    """Recall@k and latency of IVF (nprobe) and HNSW (ef_search) against exact top-k on trained models: the queries
    are the model's embeddings of its test users' histories (leave-one-out), the items its own table."""
    import torch
    from torch.utils.data import DataLoader

    from genrec_hf.data import NextItemCollator, leave_one_out, load_interactions, remap_to_vocab
    from genrec_hf.loading import load_model
    from genrec_hf.serving.index import FaissIndex, recall_at_k

    if not args.model_dirs:
        raise SystemExit("ann_trained needs --model_dirs (trained run folders) and --data (one source each)")
    rows = []
    for model_dir, source in zip(args.model_dirs.split(","), args.data.split(",")):
        model, vocab = load_model(model_dir)
        data = remap_to_vocab(load_interactions(source), vocab)
        loader = DataLoader(leave_one_out(data, required=("test",))["test"], batch_size=256,
                            collate_fn=NextItemCollator(model.config.max_position_embeddings, mode="eval"))
        keys = ("input_ids", "attention_mask", "timestamps", "action_ids")
        with torch.no_grad():
            queries = torch.cat([model(**{k: b[k] for k in keys if b.get(k) is not None}).user_embeddings
                                 for b in loader])
        vectors = model.item_vectors.detach()
        options = dict(temperature=model.config.score_temperature, l2_normalize=model.config.l2_normalize_scores)
        want = model.topk(queries, args.k).items
        exact = _timed(lambda: model.topk(queries[:1], args.k), reps=args.reps * 4, max_seconds=args.max_seconds)
        items = vectors.shape[0] - 1
        base = {"model": Path(model_dir).name, "items": items, "width": vectors.shape[1], "queries": len(queries),
                "exact_p50_ms": _percentiles(exact)["p50_ms"]}
        default_nlist = FaissIndex.build(vectors, kind="ivf", **options).index.nlist
        for nlist in sorted({default_nlist, max(1, default_nlist // 4)}):
            build = time.perf_counter()
            index = FaissIndex.build(vectors, kind="ivf", nlist=nlist, **options)
            build = time.perf_counter() - build
            for nprobe in sorted({max(1, nlist // f) for f in (32, 16, 8, 4, 2)}):
                index.nprobe = index.index.nprobe = nprobe
                row = {"part": "ann_trained", **base, "kind": "ivf", "setting": f"nlist {nlist} / nprobe {nprobe}",
                       "recall@k": recall_at_k(index.search(queries, args.k).items, want), "build_s": build,
                       **_summary(_timed(lambda: index.search(queries[:1], args.k), reps=args.reps * 4,
                                         max_seconds=args.max_seconds))}
                rows.append(row)
                print(json.dumps(row), flush=True)
        build = time.perf_counter()
        index = FaissIndex.build(vectors, kind="hnsw", **options)
        build = time.perf_counter() - build
        for ef in (16, 32, 64, 128, 256):
            index.ef_search = index.index.hnsw.efSearch = ef
            row = {"part": "ann_trained", **base, "kind": "hnsw", "setting": f"M 32 / ef_search {ef}",
                   "recall@k": recall_at_k(index.search(queries, args.k).items, want), "build_s": build,
                   **_summary(_timed(lambda: index.search(queries[:1], args.k), reps=args.reps * 4,
                                     max_seconds=args.max_seconds))}
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def part_requests(args) -> list[dict]:
    """Whole requests at one catalog size: history (recompute) vs known user (cached) vs one event, in-process
    and over loopback HTTP."""
    import httpx

    from genrec_hf.data import ItemVocab
    from genrec_hf.serving import Recommender
    from genrec_hf.serving.server import ServerThread, create_app

    rows = []
    items = int(args.request_items)
    if max(int(n) for n in args.request_lengths.split(",")) >= args.window - 2:
        raise SystemExit("--request_lengths must leave room in --window for the new events")
    for preset in args.presets.split(","):
        model = _model(preset, items, args.window)
        recommender = Recommender(model, ItemVocab([str(i) for i in range(1, items + 1)]))
        app = create_app(recommender, max_body_bytes=64 << 20, max_events=args.window, max_cache_bytes=8 << 30)
        with ServerThread(app) as server, httpx.Client(base_url=server.url, timeout=300) as client:
            for length in (int(n) for n in args.request_lengths.split(",")):
                ids, times = _events(items, 64, args.window, seed=length)  # room for new events
                raw = [[str(i) for i in row] for row in ids.tolist()]
                stamps = times.tolist()
                users = [f"u{length}-{j}" for j in range(64)]
                for j, user in enumerate(users):  # states of `length` events, built before the timed part
                    recommender.update(user, raw[j][:length], timestamps=stamps[j][:length])
                cursor = [length]

                def new_event(http: bool):
                    n = cursor[0]
                    cursor[0] += 1
                    if http:
                        client.post("/events", json={"user_id": users[0], "events": raw[0][n:n + 1],
                                                     "timestamps": stamps[0][n:n + 1]}).raise_for_status()
                    else:
                        recommender.update(users[0], raw[0][n:n + 1], timestamps=stamps[0][n:n + 1])

                for batch in (int(b) for b in args.batches.split(",")):
                    histories = [r[:length] for r in raw[:batch]]
                    history_times = [t[:length] for t in stamps[:batch]]
                    cases = {
                        ("in-process", "history (full recompute)"): lambda: recommender.recommend(
                            histories if batch > 1 else histories[0], args.k,
                            timestamps=history_times if batch > 1 else history_times[0]),
                        ("http", "history (full recompute)"): lambda: client.post("/recommend", json=(
                            {"histories": histories, "k": args.k} if batch > 1 else
                            {"history": histories[0], "timestamps": history_times[0], "k": args.k})
                        ).raise_for_status(),
                        ("in-process", "known user (cached state)"): lambda: recommender.recommend_users(
                            users[:batch] if batch > 1 else users[0], args.k),
                    }
                    if batch == 1:
                        cases[("http", "known user (cached state)")] = lambda: client.post(
                            "/recommend", json={"user_id": users[0], "k": args.k}).raise_for_status()
                        cases[("in-process", "one new event (update)")] = lambda: new_event(False)
                        cases[("http", "one new event (/events)")] = lambda: new_event(True)
                    for (mode, what), fn in cases.items():
                        reps = args.reps if "recompute" in what else args.reps * 4
                        if what.startswith("one new event"):
                            reps = min(reps, (args.window - cursor[0] - 2) // 2)
                        measured = _timed(fn, reps=reps, max_seconds=args.max_seconds)
                        row = {"part": "requests", "preset": preset, "items": items, "history": length,
                               "mode": mode, "request": what, "batch": batch, **_summary(measured, batch)}
                        rows.append(row)
                        print(json.dumps(row), flush=True)
            assert recommender.user_states.stats.rebuilds == 64 * len(args.request_lengths.split(","))
        model = recommender = app = None
        gc.collect()
    return rows


def part_freshness(args) -> list[dict]:
    """Time until a new item is recommendable: retrain of that size vs putting its vector into the top-k."""
    import numpy as np
    import torch

    from genrec_hf.serving.index import FaissIndex

    rows = []
    items = int(args.request_items)
    for preset in args.presets.split(","):
        model = _model(preset, items, args.window, loss_type="sampled")
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        ids, times = _events(items, args.train_batch, args.length + 1, seed=11)
        inputs, labels = ids[:, :-1], ids[:, 1:]

        def train_step():
            loss = model(inputs, timestamps=times[:, :-1], labels=labels).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        measured = _timed(train_step, reps=args.train_steps, max_seconds=args.max_seconds)
        step_s = float(np.median(measured))
        events_per_s = inputs.numel() / step_s
        optimizer = None
        model.eval()
        rows.append({"part": "freshness", "preset": preset, "items": items, "path": "retrain (one epoch)",
                     "seconds": args.epoch_events / events_per_s, "detail": f"{events_per_s:,.0f} training events/s "
                     f"(median of {len(measured)} steps of {args.train_batch}×{args.length}, sampled softmax), "
                     f"× {args.epoch_events:,} events"})
        # Exact top-k: the new item's vector appended to the item table (tied input/output) is recommendable now.
        vector = torch.randn(model.config.head_output_size) * 0.02

        def append_exact():
            model.resize_token_embeddings(model.config.vocab_size + 1, mean_resizing=False)
            with torch.no_grad():
                model.get_output_embeddings().weight[-1] = vector

        measured = _timed(append_exact, reps=3, max_seconds=args.max_seconds, warmup=0)
        rows.append({"part": "freshness", "preset": preset, "items": items, "path": "exact top-k: append vector",
                     "seconds": float(np.median(measured)), "detail": "resize_token_embeddings(+1) + row write"})
        build = time.perf_counter()
        index = FaissIndex.build(model.item_vectors, kind="ivf", **_ivf_options(items, args))
        build = time.perf_counter() - build
        rows.append({"part": "freshness", "preset": preset, "items": items, "path": "IVF index: rebuild",
                     "seconds": build, "detail": f"train + add {items:,} vectors (nlist {index.index.nlist})"})
        one = vector.numpy()[None].astype("float32")
        measured = _timed(lambda: index.index.add(one), reps=20, max_seconds=args.max_seconds, warmup=0)
        rows.append({"part": "freshness", "preset": preset, "items": items, "path": "IVF index: add one vector",
                     "seconds": float(np.median(measured)), "detail": "faiss add (no retraining of the lists)"})
        model = index = None
        gc.collect()
        rows.append(_add_items_row(preset, items, args))
        for row in rows[-5:]:
            print(json.dumps(row), flush=True)
        gc.collect()
    return rows


# An ML-100K-like item feature row: 19 genres, the release year, a 64-d title embedding.
FRESHNESS_SCHEMA = [dict(name="genres", kind="multi_hot", dim=19, categories=[f"g{i}" for i in range(19)]),
                    dict(name="year", kind="numeric", dim=1, mean=0.0, std=1.0),
                    dict(name="title", kind="dense", dim=64)]


def _add_items_row(preset: str, items: int, args) -> dict:
    """Cold start: a new item's metadata row → `model.add_items` → its fused vector in the exact top-k table."""
    import numpy as np
    import torch

    model = _model(preset, items, args.window, item_tower_config=dict(feature_schema=FRESHNESS_SCHEMA))
    width = sum(block["dim"] for block in FRESHNESS_SCHEMA)
    added = iter(range(10**9))

    def add_one():
        model.add_items([f"new-{next(added)}"], torch.randn(1, width))
        with torch.no_grad():
            model.item_vectors  # the fused table the next request scores against

    measured = _timed(add_one, reps=3, max_seconds=args.max_seconds, warmup=0)
    return {"part": "freshness", "preset": preset, "items": items,
            "path": "cold-start add_items (metadata → recommendable)", "seconds": float(np.median(measured)),
            "detail": f"add_items of one {width}-feature row + the fused item table recomputed"}


def part_add_items(args) -> list[dict]:
    rows = [_add_items_row(preset, int(args.request_items), args) for preset in args.presets.split(",")]
    for row in rows:
        print(json.dumps(row), flush=True)
    return rows


def part_grid(args) -> list[dict]:
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
                            row = {"part": "grid", "preset": preset, "items": items, "topk": topk, "mode": mode,
                                   "batch": batch, "recall@k": quality, "build_s": build, **result}
                            rows.append(row)
                            print(json.dumps(row), flush=True)
                finally:
                    if client is not None:
                        client.close()
                    if server is not None:
                        server.__exit__(None, None, None)
    return rows


def _ms(row: dict) -> str:
    return f"{row['p50_ms']:.1f} | {row['p95_ms']:.1f} | {row['p99_ms']:.1f}"


def tables(part: str, rows: list[dict], args, load: str) -> list[str]:
    """Markdown for one part, headed by the load average measured right after it."""
    lines = [f"### {part} ({load} at the end of this part)", ""]
    if part == "state":
        lines += ["| preset | batch | history | computation | p50 ms | p95 ms | p99 ms | n | speedup (p50) | "
                  "cache MiB / user |", "|" + "---|" * 10]
        for r in rows:
            speed = f"**{r['speedup_p50']:.1f}×**" if "speedup_p50" in r else ""
            lines.append(f"| {r['preset']} | {r['batch']} | {r['history']} | {r['mode']} | {_ms(r)} | {r['n']} | "
                         f"{speed} | {r['cache_mib_per_user']:.2f} |")
    elif part == "topk":
        lines += ["| preset (width) | items | top-k | batch | p50 ms | p95 ms | p99 ms | queries/s | "
                  f"recall@{args.k} | build s | nlist / nprobe |", "|" + "---|" * 11]
        for r in rows:
            lists = f"{r['nlist']} / {r['nprobe']}" if r["nlist"] else ""
            lines.append(f"| {r['preset']} ({r['width']}) | {r['items']:,} | {r['topk']} | {r['batch']} | "
                         f"{_ms(r)} | {r['histories_per_s']:.0f} | {r['recall@k']:.3f} | {r['build_s']:.1f} | "
                         f"{lists} |")
    elif part == "ann_trained":
        lines += [f"| model | items | width | test queries | index | setting | recall@{args.k} | p50 ms | p95 ms | "
                  "exact p50 ms | build s |", "|" + "---|" * 11]
        for r in rows:
            lines.append(f"| {r['model']} | {r['items']:,} | {r['width']} | {r['queries']:,} | {r['kind']} | "
                         f"{r['setting']} | {r['recall@k']:.3f} | {r['p50_ms']:.2f} | {r['p95_ms']:.2f} | "
                         f"{r['exact_p50_ms']:.2f} | {r['build_s']:.2f} |")
    elif part == "requests":
        lines += ["| preset | history | request | mode | batch | p50 ms | p95 ms | p99 ms | requests/s | "
                  "histories/s | n |", "|" + "---|" * 11]
        for r in rows:
            lines.append(f"| {r['preset']} | {r['history']} | {r['request']} | {r['mode']} | {r['batch']} | "
                         f"{_ms(r)} | {r['requests_per_s']:.1f} | {r['histories_per_s']:.1f} | {r['n']} |")
    elif part == "ann":
        lines += [f"| preset (width) | items | item space | nlist / nprobe | recall@{args.k} | IVF p50 ms | IVF p95 ms "
                  "| exact p50 ms | build s |", "|" + "---|" * 9]
        for r in rows:
            lines.append(f"| {r['preset']} ({r['width']}) | {r['items']:,} | {r['space']} | {r['nlist']} / "
                         f"{r['nprobe']} | {r['recall@k']:.3f} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} | "
                         f"{r['exact_p50_ms']:.1f} | {r['build_s']:.1f} |")
    elif part == "window":
        lines += ["| model (window) | overflow_keep | mode | updates | p50 ms | p95 ms | p99 ms | mean ms | "
                  "rebuilds per update | n |", "|" + "---|" * 10]
        for r in rows:
            lines.append(f"| {r['model']} ({r['window']}) | {r['overflow_keep']} | {r['mode']} | {r['phase']} | "
                         f"{_ms(r)} | {r['mean_ms']:.1f} | {r['rebuilds_per_update']:.2f} | {r['n']} |")
    elif part in ("freshness", "add_items"):
        lines += ["| preset | items | path to a recommendable new item | seconds | how |", "|---|---|---|---|---|"]
        for r in rows:
            seconds = "—" if r["seconds"] is None else f"{r['seconds']:,.4g}"
            lines.append(f"| {r['preset']} | {r['items']:,} | {r['path']} | {seconds} | {r['detail']} |")
    else:
        lines += [f"| preset | items | top-k | mode | batch | p50 ms | p95 ms | p99 ms | req/s | histories/s | "
                  f"recall@{args.k} | requests |", "|" + "---|" * 12]
        for r in rows:
            lines.append(f"| {r['preset']} | {r['items']:,} | {r['topk']} | {r['mode']} | {r['batch']} | "
                         f"{_ms(r)} | {r['requests_per_s']:.1f} | {r['histories_per_s']:.1f} | "
                         f"{r['recall@k']:.3f} | {r['requests']} |")
    return lines + [""]


def _keeps(text: str, window: int) -> list[int]:
    named = {"window": window, "half": max(1, window // 2)}
    return [named[t] if t in named else int(t) for t in text.split(",")]


def part_window(args) -> list[dict]:
    """One-event updates of a trained model's served state before and after the window fills, per overflow_keep:
    each of `--users` users gets `--stream_events` single events (catalog items, increasing timestamps)."""
    import numpy as np

    from genrec_hf.serving import Recommender, UserStateStore

    if not args.model_dir:
        raise SystemExit("the window part needs --model_dir: a trained model folder")
    recommender = Recommender.from_pretrained(args.model_dir)
    window = min(recommender.config.max_position_embeddings, 1024)  # 1024: the store's default max_events
    rng = np.random.default_rng(0)
    streams = [([str(i) for i in rng.choice(recommender.vocab.raw_ids, args.stream_events)],
                (1_700_000_000 + np.cumsum(rng.integers(1, 3600, args.stream_events))).tolist())
               for _ in range(args.users)]
    rows = []
    for keep in _keeps(args.overflow_keeps, window):
        for mode in args.modes.split(","):
            client = server = None
            if mode == "http":
                import httpx

                from genrec_hf.serving.server import ServerThread, create_app

                server = ServerThread(create_app(recommender, overflow_keep=keep)).__enter__()
                client = httpx.Client(base_url=server.url, timeout=120)
            else:
                recommender.user_states = UserStateStore(recommender, overflow_keep=keep)
            store = recommender.user_states
            times_by_phase: dict[str, list[float]] = {"filling": [], "past": []}
            rebuilds = {"filling": 0, "past": 0}
            try:
                for user, (items, stamps) in enumerate(streams):
                    for i in range(args.stream_events):
                        phase = "filling" if i < window else "past"
                        before = store.stats.rebuilds
                        begin = time.perf_counter()
                        if client is None:
                            recommender.update(f"u{user}", items[i:i + 1], timestamps=stamps[i:i + 1])
                        else:
                            client.post("/events", json={"user_id": f"u{user}", "events": items[i:i + 1],
                                                         "timestamps": stamps[i:i + 1]}).raise_for_status()
                        if i:  # the first event builds the user's state: neither phase
                            times_by_phase[phase].append(time.perf_counter() - begin)
                            rebuilds[phase] += store.stats.rebuilds - before
            finally:
                if client is not None:
                    client.close()
                    server.__exit__(None, None, None)
            for phase, label in (("filling", f"events 2..{window} (filling)"),
                                 ("past", f"events {window + 1}..{args.stream_events} (past the window)")):
                measured = times_by_phase[phase]
                row = {"part": "window", "model": Path(args.model_dir).name, "window": window, "overflow_keep": keep,
                       "mode": mode, "phase": label, **_summary(measured), "mean_ms": 1000 * float(np.mean(measured)),
                       "rebuilds_per_update": rebuilds[phase] / len(measured)}
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows


PARTS = {"state": part_state, "topk": part_topk, "ann": part_ann, "ann_trained": part_ann_trained,
         "requests": part_requests, "freshness": part_freshness, "add_items": part_add_items, "window": part_window,
         "grid": part_grid}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="state,topk,requests,freshness", help=f"comma-separated: {', '.join(PARTS)}")
    parser.add_argument("--presets", default="genrec-2m,genrec-8m,genrec-30m", help="comma-separated preset names")
    parser.add_argument("--items", default="10000,100000,1000000", help="catalog sizes (topk, grid)")
    parser.add_argument("--request_items", default="100000", help="catalog size of the requests and freshness parts")
    parser.add_argument("--request_lengths", default="200", help="history lengths of the requests part")
    parser.add_argument("--batches", default="1,64", help="comma-separated histories per request")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--length", type=int, default=200, help="events per history (state, freshness, grid)")
    parser.add_argument("--window", type=int, default=256, help="max_position_embeddings of the models")
    parser.add_argument("--reps", type=int, default=10, help="timed repetitions per case (upper bound; cheap "
                        "cases run 4× as many)")
    parser.add_argument("--max_seconds", type=float, default=20.0, help="time limit per case (upper bound)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--nlist", type=int, default=None, help="IVF lists (default 4·sqrt(V), at most 1024)")
    parser.add_argument("--nprobe_fraction", type=float, default=0.125, help="share of the IVF lists searched")
    parser.add_argument("--train_points", type=int, default=50_000, help="IVF k-means training sample")
    parser.add_argument("--train_batch", type=int, default=8, help="histories per training step (freshness)")
    parser.add_argument("--train_steps", type=int, default=3, help="timed training steps (freshness)")
    parser.add_argument("--epoch_events", type=int, default=1_000_000, help="events of the retrain's epoch")
    parser.add_argument("--model_dir", default=None, help="window: a trained model folder")
    parser.add_argument("--overflow_keeps", default="window,half",
                        help="window: overflow_keep values (window, half or numbers)")
    parser.add_argument("--stream_events", type=int, default=200, help="window: one-event updates per user")
    parser.add_argument("--users", type=int, default=5, help="window: users streamed")
    # grid part
    parser.add_argument("--topk", default="exact,ivf,hnsw", help="grid: exact, ivf, hnsw, flat")
    parser.add_argument("--modes", default="in-process,http", help="grid, window: in-process, http")
    parser.add_argument("--requests", type=int, default=200, help="grid: requests per case (upper bound)")
    parser.add_argument("--nprobe", type=int, default=None, help="grid: IVF lists searched (default nlist/4)")
    parser.add_argument("--ef_search", type=int, default=64, help="grid: HNSW candidates searched")
    parser.add_argument("--model_dirs", default=None, help="ann_trained: comma-separated trained run folders")
    parser.add_argument("--data", default=None, help="ann_trained: comma-separated event sources, one per model")
    parser.add_argument("--out", default=None, help="folder for results.json and results.md")
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    started = datetime.now(timezone.utc)
    out = Path(args.out) if args.out else None
    models = "trained models of --model_dirs" if args.parts == "ann_trained" else "untrained models of the preset sizes"
    lines = [f"## Serving benchmark ({started:%Y-%m-%d %H:%M} UTC, {models}, torch threads "
             f"{torch.get_num_threads()}; {_load()} at the start)", ""]
    rows: list[dict] = []
    for part in args.parts.split(","):
        if part not in PARTS:
            parser.error(f"unknown part {part!r}; expected some of {', '.join(PARTS)}")
        part_rows = PARTS[part](args)
        load = _load()
        for row in part_rows:
            row["load"] = load
        rows += part_rows
        lines += tables(part, part_rows, args, load)
        if out:  # written after every part, so a stopped run keeps what it measured
            out.mkdir(parents=True, exist_ok=True)
            (out / "results.json").write_text(json.dumps(rows, indent=2))
            (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
