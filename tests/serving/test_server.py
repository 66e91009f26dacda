"""HTTP server: a real uvicorn server on a loopback port queried with httpx, its 4xx errors, no leaked stack
traces, the per-user cached state behind /events, and `genrec-hf serve` itself."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from genrec_hf.cli import main  # noqa: E402
from genrec_hf.serving import Recommender  # noqa: E402
from genrec_hf.serving.server import ServerThread, create_app, free_port  # noqa: E402

from tests.helpers import REPO_ROOT  # noqa: E402
from tests.serving.conftest import NUM_ITEMS  # noqa: E402

HISTORY = ["m105", "m117", "m101", "m130"]


def assert_same_items(got: list[dict], expected: list) -> None:
    """Same items and titles in the same order, scores to float tolerance (a cached state and a full recompute
    differ in the last bits)."""
    assert [(g["item_id"], g["title"]) for g in got] == [(e.item_id, e.title) for e in expected]
    assert [g["score"] for g in got] == pytest.approx([e.score for e in expected], abs=1e-5)


@pytest.fixture(scope="module")
def recommender(model_dir, adapter_dir):
    return Recommender.from_pretrained(model_dir, adapters={"short": adapter_dir})


@pytest.fixture(scope="module")
def server(recommender):
    app = create_app(recommender, max_body_bytes=4096, max_k=20, max_rows=3, max_users=2, max_events=5,
                     overflow_keep=5)  # states read exactly the stored events: answers equal a stateless request
    with ServerThread(app) as running:
        with httpx.Client(base_url=running.url, timeout=30) as client:
            yield client


def test_recommend_over_http_equals_in_process(server, recommender):
    """Catches the HTTP layer dropping the task, k or exclude_seen, or answering with indices instead of raw ids
    and titles."""
    assert server.get("/health").json()["status"] == "ok"
    for task in (None, "short"):
        body = {"history": HISTORY, "k": 5, "task": task, "exclude_seen": False}
        answer = server.post("/recommend", json=body)
        assert answer.status_code == 200, answer.text
        expected = recommender.recommend(HISTORY, 5, task=task, exclude_seen=False)
        assert answer.json()["items"] == [r.to_dict() for r in expected]
    batch = server.post("/recommend", json={"histories": [HISTORY, ["m133"]], "k": 3}).json()["results"]
    assert [row[0]["item_id"] for row in batch] == [r[0].item_id for r in recommender.recommend([HISTORY, ["m133"]], 3)]
    got = server.post("/recommend", json={"history": HISTORY, "k": 5, "candidates": ["m110", "m111", "m105"]})
    assert {item["item_id"] for item in got.json()["items"]} == {"m110", "m111"}
    item = server.get("/items/m110").json()
    assert item["title"] == "Title m110" and item["index"] == 11


def test_events_then_recommend_by_user(server, recommender):
    """Catches /events not appending in order, keeping more than max_events per user, or storing part of a batch
    that holds an unknown item; and LRU eviction dropping the recently used user instead of the oldest."""
    assert server.post("/events", json={"user_id": "u1", "events": HISTORY[:2]}).json()["num_events"] == 2
    assert server.post("/events", json={"user_id": "u1", "events": HISTORY[2:] + ["m102", "m103"]}).json()[
        "num_events"] == 5  # bounded: the oldest event goes
    bad = server.post("/events", json={"user_id": "u1", "events": ["m104", "ghost"]})
    assert bad.status_code == 422 and "ghost" in bad.json()["error"]["message"]
    by_user = server.post("/recommend", json={"user_id": "u1", "k": 4}).json()["items"]
    kept = HISTORY[1:] + ["m102", "m103"]
    assert_same_items(by_user, recommender.recommend(kept, 4))
    server.post("/events", json={"user_id": "u2", "events": ["m100"]})
    server.post("/recommend", json={"user_id": "u1", "k": 1})  # u1 is now the most recently used
    server.post("/events", json={"user_id": "u3", "events": ["m100"]})  # evicts u2, not u1
    assert server.post("/recommend", json={"user_id": "u2", "k": 1}).status_code == 404
    assert server.post("/recommend", json={"user_id": "u1", "k": 1}).status_code == 200


@pytest.mark.parametrize(("request_kwargs", "status", "needle"), [
    ({"json": {"history": ["m105", "nope"], "k": 5}}, 422, "'nope'"),
    ({"json": {"history": [], "k": 5}}, 422, "empty"),
    ({"json": {"history": HISTORY, "k": 0}}, 422, "k=0"),
    ({"json": {"history": HISTORY, "k": 21}}, 422, "out of range"),
    ({"json": {"history": HISTORY, "k": "ten"}}, 422, "k"),
    ({"json": {"history": HISTORY, "task": "long"}}, 422, "'long'"),
    ({"json": {"history": HISTORY, "candidates": ["zzz"]}}, 422, "'zzz'"),
    ({"json": {"history": HISTORY, "colour": "red"}}, 422, "colour"),
    ({"json": {"k": 5}}, 422, "exactly one of"),
    ({"json": {"user_id": "never-seen"}}, 404, "never-seen"),
    ({"content": b'{"history": ["m105", ', "headers": {"content-type": "application/json"}}, 400, "JSON"),
    ({"content": json.dumps({"history": ["m105"] * 2000}).encode(), "headers": {"content-type": "application/json"}},
     413, "limit"),
    # issue 27 H9: a JSON true was read as k=1 (or item 1); item 5: rows per request are capped (max_rows=3 here)
    ({"json": {"history": HISTORY, "k": True}}, 422, "k: Input should be a valid integer"),
    ({"json": {"history": ["m105", True], "k": 2}}, 422, "history.1"),
    ({"json": {"history": HISTORY, "k": 2, "timestamps": [1, 2, 3, True]}}, 422, "timestamps.3"),
    ({"json": {"histories": [["m105"]] * 4, "k": 2}}, 413, "over the limit of 3 (max_rows)"),
    # H10: beyond int64 was "Overflow when unpacking long long" naming no field
    ({"json": {"history": HISTORY[:1], "k": 2, "timestamps": [1 << 64]}}, 422,
     "timestamps[0]=18446744073709551616 does not fit in 64 bits"),
])
def test_request_errors_are_clear_4xx_json(server, request_kwargs, status, needle):
    """Catches bad requests answered 500 (or 200 with a silently capped k), error bodies that are not JSON or do
    not name the culprit, and oversize bodies read in full instead of refused with 413."""
    answer = server.post("/recommend", **request_kwargs)
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert needle in error["message"] and error["type"]
    assert "Traceback" not in answer.text


def test_a_bad_events_request_does_not_poison_the_user(server):
    """Issue 27 item 4: a timestamp beyond int64 got a 422, but the events were appended before the forward
    failed, so every later /events and /recommend for that user answered 422 until eviction."""
    assert server.post("/events", json={"user_id": "p", "events": ["m101"], "timestamps": [10]}).status_code == 200
    bad = server.post("/events", json={"user_id": "p", "events": ["m102"], "timestamps": [1 << 63]})
    assert bad.status_code == 422 and "timestamps[0]" in bad.json()["error"]["message"]
    assert server.post("/recommend", json={"user_id": "p", "k": 2}).status_code == 200
    good = server.post("/events", json={"user_id": "p", "events": ["m102"], "timestamps": [20]})
    assert good.status_code == 200 and good.json()["num_events"] == 2


def test_unknown_item_url_and_internal_errors(recommender, server):
    """Catches GET /items of an unknown id answering 500, and an unexpected exception reaching the client with
    its stack trace or message (it must be a generic 500 JSON, logged on the server)."""
    answer = server.get("/items/ghost")
    assert answer.status_code == 404 and "ghost" in answer.json()["error"]["message"]
    assert server.get("/nowhere").status_code == 404
    from fastapi.testclient import TestClient

    class Broken(Recommender):
        def recommend(self, *args, **kwargs):
            raise RuntimeError("secret internals at /srv/model")

    broken = Broken(recommender.model, recommender.vocab)
    with TestClient(create_app(broken), raise_server_exceptions=False) as client:
        answer = client.post("/recommend", json={"history": HISTORY})
    assert answer.status_code == 500
    assert answer.json()["error"]["type"] == "internal_error"
    assert "secret" not in answer.text and "Traceback" not in answer.text


def test_events_extend_the_cached_state(model_dir, adapter_dir):
    """Catches POST /events storing the history but recomputing it (or not updating the state at all) instead of
    extending the user's cached state with the new events, timestamps lost on the way, and a user_id request
    that re-encodes the history instead of reading the state."""
    recommender = Recommender.from_pretrained(model_dir, adapters={"short": adapter_dir})  # an app of its own
    app = create_app(recommender, max_events=50)
    store = recommender.user_states
    events, times = ["m105", "m117", "m101", "m130", "m102"], [100, 200, 5_000, 90_000, 90_030]
    with ServerThread(app) as running, httpx.Client(base_url=running.url, timeout=30) as client:
        assert client.post("/events", json={"user_id": "t", "events": events[:2], "timestamps": times[:2]}
                           ).json()["num_events"] == 2
        for raw, time_ in zip(events[2:], times[2:]):
            answer = client.post("/events", json={"user_id": "t", "events": [raw], "timestamps": [time_]})
            assert answer.status_code == 200, answer.text
        assert store.stats.rebuilds == 1 and store.stats.incremental == 3
        forwards = []
        real = recommender._forward
        recommender._forward = lambda inputs, task: forwards.append(task) or real(inputs, task)
        try:
            by_user = client.post("/recommend", json={"user_id": "t", "k": 4}).json()["items"]
        finally:
            recommender._forward = real
        assert forwards == []  # served from the cached embedding
        assert_same_items(by_user, recommender.recommend(events, 4, timestamps=times))
        short = client.post("/recommend", json={"user_id": "t", "k": 4, "task": "short"}).json()["items"]
        assert_same_items(short, recommender.recommend(events, 4, task="short", timestamps=times))
        mixed = client.post("/events", json={"user_id": "t", "events": ["m103"]})
        assert mixed.status_code == 422 and "timestamps" in mixed.json()["error"]["message"]
        assert client.get("/health").json()["cache_bytes"] == store.cache_bytes > 0


def test_cli_serve_end_to_end(model_dir, adapter_dir, tmp_path):
    """Catches `genrec-hf serve` not loading the adapters it is given, listening elsewhere than the loopback port
    asked for, or not answering; and a malformed --adapter flag failing with a traceback instead of exit 2."""
    assert main(["serve", str(model_dir), "--adapter", "no-equals-sign"]) == 2
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "genrec_hf.cli", "serve", str(model_dir), "--adapter", f"short={adapter_dir}",
         "--host", "127.0.0.1", "--port", str(port)],
        cwd=REPO_ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while True:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).json()
                break
            except httpx.TransportError:
                assert process.poll() is None, process.stderr.read().decode()[-2000:]
                assert time.monotonic() < deadline, "server did not come up"
                time.sleep(0.5)
        assert health["tasks"] == ["short"] and health["num_items"] == NUM_ITEMS
        answer = httpx.post(f"http://127.0.0.1:{port}/recommend", json={"history": HISTORY, "k": 3, "task": "short"},
                            timeout=30)
        assert answer.status_code == 200 and len(answer.json()["items"]) == 3
        # issue 27 H15: SIGTERM while a client has sent half its body left the server waiting for it for ever
        stalled = socket.create_connection(("127.0.0.1", port))
        stalled.sendall(b"POST /recommend HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                        b"Content-Length: 1000\r\n\r\n{\"history\": [")
        time.sleep(0.5)
        process.terminate()
        started = time.monotonic()
        process.wait(timeout=60)  # the shutdown timeout (5 s) ends the stalled request
        assert time.monotonic() - started < 30
        stalled.close()
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=60)


def test_streamed_oversize_body_is_refused(server):
    """Catches the size limit trusting Content-Length only: a chunked body without one must also get 413."""
    chunks = iter([b'{"history": [' + b'"m105", ' * 1000, b'"m105"]}'])
    answer = server.post("/recommend", content=chunks, headers={"content-type": "application/json"})
    assert answer.status_code == 413, answer.text
    assert answer.json()["error"]["type"] == "payload_too_large"


def test_missing_serve_extra_names_it(model_dir):
    """Catches `genrec-hf serve` without FastAPI failing with a traceback instead of one line naming
    `pip install "genrec-hf[serve]"`."""
    code = (f"import sys; sys.modules['fastapi'] = None\nfrom genrec_hf.cli import main\n"
            f"sys.exit(main(['serve', {str(model_dir)!r}]))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert 'pip install "genrec-hf[serve]"' in result.stderr and "Traceback" not in result.stderr


def test_bench_serving_window_part_runs(model_dir):
    """Keeps the benchmark of issue 27 item 8 runnable, and checks what it reports: past the window the old
    behaviour (overflow_keep = window) rebuilds on every update, the default on one in window/2."""
    import argparse

    from tests.helpers import benchmark_module

    bench = benchmark_module("bench_serving")
    args = argparse.Namespace(model_dir=str(model_dir), overflow_keeps="window,half", stream_events=24, users=1,
                              modes="in-process,http")
    rows = bench.part_window(args)
    rebuilds = {(r["overflow_keep"], r["mode"], r["phase"].split(" (")[1]): r["rebuilds_per_update"] for r in rows}
    assert len(rows) == 8 and rows[0]["window"] == 16
    for mode in ("in-process", "http"):
        assert rebuilds[(16, mode, "filling)")] == rebuilds[(8, mode, "filling)")] == 0
        assert rebuilds[(16, mode, "past the window)")] == 1.0 and rebuilds[(8, mode, "past the window)")] == 1 / 8
    assert "| overflow_keep |" in "\n".join(bench.tables("window", rows, args, "load"))
