"""Staleness replay: which context, targets and exclusions each Δ gets, who is counted out, and that the ranking is
the one ranking path's (checked against the dense reference)."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from genrec_hf import GenRecForNextItemPrediction
from genrec_hf.data import build_interactions
from genrec_hf.evaluation import dense_target_ranks, metrics_from_ranks
from genrec_hf.evaluation.staleness import (build_replay, evaluate_staleness, format_duration, parse_duration,
                                            parse_durations, request_replay, staleness_replay)

from tests.helpers import tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")

CUT = 1_000_000
H = 3600


def _data():
    events = [
        # u1: two events before the cut, then C 500 s after it, D after 1 h, E after a day
        ("u1", "A", CUT - 900, 5.0), ("u1", "B", CUT - 800, 2.0), ("u1", "C", CUT + 500, 1.0),
        ("u1", "D", CUT + H + 400, 5.0), ("u1", "E", CUT + 25 * H, 4.0),
        ("u2", "A", CUT - 900, 3.0), ("u2", "B", CUT - 100, 3.0),  # nothing after the cut
        ("u3", "A", CUT + 10, 3.0), ("u3", "F", CUT + 20, 3.0),  # nothing before the cut: no cached state
        ("u4", "B", CUT - 500, 3.0), ("u4", "A", CUT, 2.0), ("u4", "F", CUT + H, 5.0),  # A exactly at the cut
    ]
    frame = pd.DataFrame(events, columns=["user_id", "item_id", "timestamp", "rating"])
    return build_interactions(frame, name="toy", min_user_events=1)


def _by_user(replay, data):
    decode = data.vocab.decode
    return {row["user_id"]: ([decode(i) for i in row["item_ids"]], [decode(i) for i in row["target_ids"]],
                             [decode(i) for i in row["consumed_ids"]]) for row in replay.rows}


def test_cut_replay_rows_per_delta():
    """anchor="cut": the state read past the cut, the target taken before the show time, items consumed in between not
    excluded, or users without a later event / without a cached state silently mixed in (or lost uncounted)."""
    data = _data()
    zero = staleness_replay(data, 0, cut=CUT)
    assert _by_user(zero, data) == {"u1": (["A", "B"], ["C"], []), "u4": (["B"], ["A"], [])}
    assert zero.stats["num_users_without_target"] == 1 and zero.stats["num_users_without_context"] == 1
    hour = staleness_replay(data, "1h", cut=CUT)
    assert _by_user(hour, data) == {"u1": (["A", "B"], ["D"], ["C"]), "u4": (["B"], ["F"], ["A"])}
    day = staleness_replay(data, "24h", cut=CUT)
    assert _by_user(day, data) == {"u1": (["A", "B"], ["E"], ["C", "D"])}
    assert day.stats["num_users_without_target"] == 2 and day.stats["num_users_without_context"] == 1
    assert day.rows[0]["target_time"] == CUT + 25 * H


def test_replay_tasks():
    """The downstream tasks measured from the context's end instead of the show time, or their filters (rating,
    availability, the long-horizon window and its new-items rule) dropped."""
    data = _data()
    high = staleness_replay(data, 0, cut=CUT, task="high_engagement", threshold=4.0)
    assert _by_user(high, data) == {"u1": (["A", "B"], ["D"], []), "u4": (["B"], ["F"], [])}
    window = staleness_replay(data, "1h", cut=CUT, task="long_horizon", start_days=0, end_days=2)
    assert _by_user(window, data)["u1"] == (["A", "B"], ["D", "E"], ["C"])
    assert window.protocol.set_valued
    # available since its first appearance; "new" = available for less than 86.4 s at the event's time: u1's C is
    # new at CUT + 500 (its first appearance), u4's A (seen at CUT - 900) and F (seen by u3 at CUT + 10) are not
    new = staleness_replay(data, 0, cut=CUT, task="availability", window_days=0.001)
    assert _by_user(new, data) == {"u1": (["A", "B"], ["C"], [])}
    assert new.protocol.available_since is not None and new.stats["num_users_without_target"] == 2


def test_ranking_goes_through_the_one_path_with_consumed_items_excluded():
    """A second ranking loop drifting from `rank_targets`, or the consumed-in-between items ranked above the
    target (the user has them already), inflate or deflate every stale MRR."""
    data = _data()
    torch.manual_seed(0)
    model = GenRecForNextItemPrediction(tiny_config(vocab_size=len(data.vocab), num_action_types=0)).eval()
    result = evaluate_staleness(model, data, [0, "1h", "24h"], anchor="cut", cut=CUT, batch_size=1)
    assert set(result["staleness"]) == {"0", "1h", "24h"}
    for delta in (0, H, 24 * H):
        replay = staleness_replay(data, delta, cut=CUT)
        ranks = []
        for row in replay.rows:
            ids = torch.tensor([row["item_ids"]])
            scores = model.score(model(ids, timestamps=torch.tensor([row["timestamps"]])).user_embeddings)
            exclude = torch.tensor([row["item_ids"] + row["consumed_ids"]])
            ranks.append(dense_target_ranks(scores, torch.tensor([row["target_ids"]]), exclude))
        expected = metrics_from_ranks(torch.cat(ranks))
        got = result["staleness"][format_duration(delta)]
        assert got["mrr"] == pytest.approx(expected["mrr"])
        assert got["num_users"] == len(replay.rows)
        assert got["num_users_without_target"] == replay.stats["num_users_without_target"]
        assert got["num_users_without_context"] == 1
    assert result["staleness_cost_mrr"]["0"] == 0.0


def test_durations_and_bad_input():
    """'24h' read as 24 seconds, a negative or unparseable staleness accepted, or a replay run on data whose
    timestamps are only the event order."""
    assert parse_duration("0") == 0 and parse_duration("90s") == 90 and parse_duration("30m") == 1800
    assert parse_duration("24h") == 86400 and parse_duration("2d") == 172800 and parse_duration(3600) == 3600
    assert parse_durations("0,1h,24h,48h") == [0, 3600, 86400, 172800]
    assert [format_duration(s) for s in (0, 3600, 172800, 90, 1800)] == ["0", "1h", "48h", "90s", "30m"]
    for bad in ("-1h", "1y", "h", ""):
        with pytest.raises(ValueError, match="staleness"):
            parse_durations(bad) if bad == "" else parse_duration(bad)
    with pytest.raises(ValueError, match="repeats"):
        parse_durations("1h,60m")
    import dataclasses

    data = dataclasses.replace(_data(), has_timestamps=False)
    with pytest.raises(ValueError, match="needs timestamps.*toy"):
        staleness_replay(data, "1h", cut=CUT)
    with pytest.raises(ValueError, match="task='weekend'"):
        staleness_replay(_data(), 0, cut=CUT, task="weekend")
    with pytest.raises(ValueError, match="needs timestamps.*toy"):
        request_replay(data, "1h")
    with pytest.raises(ValueError, match="anchor='cut' needs the cache time"):
        build_replay(_data(), 0, anchor="cut")
    with pytest.raises(ValueError, match="cut=5 applies to anchor='cut' only"):
        build_replay(_data(), 0, cut=5)
    with pytest.raises(ValueError, match="anchor='cache'"):
        build_replay(_data(), 0, anchor="cache")


def test_request_replay_rows_per_delta():
    """anchor="request": the state not cut Δ before each target (or cut at the wrong side of a tie), the cut-off
    context events not excluded as consumed, or users left without a cached state averaged in."""
    data = _data()
    zero = request_replay(data, 0)  # leave-one-out test: context = all but the last event
    assert _by_user(zero, data) == {"u1": (["A", "B", "C", "D"], ["E"], []), "u2": (["A"], ["B"], []),
                                    "u3": (["A"], ["F"], []), "u4": (["B", "A"], ["F"], [])}
    hour = request_replay(data, "1h")
    # u1's E comes 25 h after the cut: an hour before it the state had everything; u2's B came 800 s after A, u3's
    # F 10 s after A: no state an hour before; u4's F came exactly 1 h after A (A is at T - Δ: still cached)
    assert _by_user(hour, data) == {"u1": (["A", "B", "C", "D"], ["E"], []), "u4": (["B", "A"], ["F"], [])}
    assert hour.stats["num_users_without_context"] == 2 and hour.stats["num_users_without_target"] == 0
    day = request_replay(data, "24h")
    assert _by_user(day, data) == {"u1": (["A", "B", "C"], ["E"], ["D"])}
    assert day.rows[0]["target_time"] == CUT + 25 * H
    high = request_replay(data, "24h", task="high_engagement", threshold=4.0)
    assert all(targets for _, targets, _ in _by_user(high, data).values())


def test_request_replay_zero_is_leave_one_out_and_consumed_items_stay_excluded():
    """Δ = 0 drifting from the leave-one-out test (another target, another exclusion set), or the stale rows
    ranking the consumed items (which leave-one-out excludes as history) above the target."""
    from torch.utils.data import DataLoader

    from genrec_hf.data import NextItemCollator, leave_one_out
    from genrec_hf.evaluation import rank_batches

    data = _data()
    torch.manual_seed(0)
    model = GenRecForNextItemPrediction(tiny_config(vocab_size=len(data.vocab), num_action_types=0)).eval()
    loo = rank_batches(model, DataLoader(leave_one_out(data, required=("test",))["test"], batch_size=2,
                                         collate_fn=NextItemCollator(16, mode="eval")))
    result = evaluate_staleness(model, data, [0, "24h"], batch_size=2)
    assert result["staleness"]["0"]["mrr"] == pytest.approx(metrics_from_ranks(loo)["mrr"])
    row = request_replay(data, "24h").rows[0]
    scores = model.score(model(torch.tensor([row["item_ids"]]),
                               timestamps=torch.tensor([row["timestamps"]])).user_embeddings)
    rank = dense_target_ranks(scores, torch.tensor([row["target_ids"]]),
                              torch.tensor([row["item_ids"] + row["consumed_ids"]]))
    assert result["staleness"]["24h"]["mrr"] == pytest.approx(1.0 / rank.item())
    assert result["staleness"]["24h"]["num_users_without_context"] == 3


def test_request_replay_long_horizon_is_stale_from_the_context_end():
    """Bug caught: the long-horizon request shown at its first target's time, which lies at least `start_days`
    after the context, so the cache at T − Δ held the whole context for every Δ below that (0, 1 h, 24 h and 48 h
    replayed the same rows and NTP's staleness cost read 0%). The window stays where the task put it."""
    D = 24 * H
    events = [("u", "A", 0, 3.0), ("u", "B", 100, 3.0), ("u", "C", 2 * D, 3.0), ("u", "D", 2 * D + 2 * H, 3.0),
              ("u", "E", 3 * D + 2 * H, 3.0)]
    data = build_interactions(pd.DataFrame(events, columns=["user_id", "item_id", "timestamp", "rating"]),
                              name="window", min_user_events=1)
    params = {"task": "long_horizon", "start_days": 1.0, "end_days": 10.0}
    zero = request_replay(data, 0, **params)
    assert _by_user(zero, data) == {"u": (["A", "B", "C", "D"], ["E"], [])}
    assert zero.stats["request_at"] == "context_end" and zero.protocol.set_valued
    hour = request_replay(data, "1h", **params)  # D, the request, came 2 h after C: consumed
    assert _by_user(hour, data) == {"u": (["A", "B", "C"], ["E"], ["D"])}
    day = request_replay(data, "24h", **params)
    assert _by_user(day, data) == {"u": (["A", "B"], ["E"], ["C", "D"])}
    assert day.rows[0]["target_time"] == 3 * D + 2 * H  # the window and its first target's time are not moved
    assert request_replay(data, "1h").stats["request_at"] == "target_time"


@pytest.mark.parametrize("cut", ["1", "4102444800"])  # 1970 and 2100
def test_a_cut_outside_the_datas_time_range_is_an_error(tmp_path, capsys, cut):
    """Issue 27 T5: `evaluate --staleness ... --staleness_anchor cut --cut` outside the data's time range exited 0
    with 0 users ranked and no warning."""
    from genrec_hf.cli import main
    from genrec_hf.data import ItemVocab

    model = GenRecForNextItemPrediction(tiny_config(num_action_types=8)).eval()
    model.save_pretrained(tmp_path / "m")
    ItemVocab([str(i) for i in range(1, 41)]).save(tmp_path / "m")
    assert main(["evaluate", str(tmp_path / "m"), "--data", "synthetic:num_users=30,num_items=40,num_clusters=3",
                 "--staleness", "0,1h", "--staleness_anchor", "cut", "--cut", cut]) == 2
    (line,) = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert f"the staleness cut {cut} (--cut) is outside the time range of" in line
    assert not list((tmp_path / "m").glob("eval_results_*"))
