"""Scaling-law fits: parameter recovery, law preference, RMSE, the user-rank bootstrap, input errors, the CLI."""

from __future__ import annotations

import importlib.util
import json
import math

import numpy as np
import pytest
import torch

from genrec_hf.cli import main
from genrec_hf.evaluation import metrics_from_ranks
from genrec_hf.evaluation import per_user_values as per_user_metric
from genrec_hf.scaling import ScalingFit, fit_csv, fit_scaling

SIZES = np.geomspace(1e5, 1e8, 7)
TRUTH = dict(p0=0.31, a=0.35, n0=2e3)


def offset_points(seed: int, noise: float = 0.002, p0: float = TRUTH["p0"]) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return p0 - (SIZES / TRUTH["n0"]) ** -TRUTH["a"] + rng.normal(0, noise, len(SIZES))


def log_points(seed: int, noise: float = 0.002) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return 0.02 * np.log(SIZES) - 0.1 + rng.normal(0, noise, len(SIZES))


def write_csv(path, rows: list[dict]) -> None:
    columns = list(rows[0])
    path.write_text("\n".join([",".join(columns)] + [",".join(str(r[c]) for c in columns) for r in rows]) + "\n")


def two_task_rows() -> list[dict]:
    return ([dict(task="A", backbone_params=f"{n:.0f}", mrr=v) for n, v in zip(SIZES, offset_points(0))]
            + [dict(task="B", backbone_params=f"{n:.0f}", mrr=v) for n, v in zip(SIZES, log_points(0))])


def test_recovers_known_parameters_with_covering_intervals():
    """Catches a biased fit or intervals that are too narrow (e.g. residuals not resampled, or percentiles swapped):
    P0 must lie inside its 95% interval in at least 4 of 5 noise draws, and the estimates near the truth."""
    covered = 0
    for seed in range(5):
        fit = fit_scaling(SIZES, offset_points(seed), task="A", n_bootstrap=100, seed=seed)
        assert fit.offset.converged and fit.identified, fit.reasons
        assert fit.offset.p0 == pytest.approx(TRUTH["p0"], abs=0.02)
        assert fit.offset.a == pytest.approx(TRUTH["a"], rel=0.3)
        low, high = fit.offset.p0_interval
        covered += low <= TRUTH["p0"] <= high
        assert fit.offset.a_interval[0] < fit.offset.a < fit.offset.a_interval[1]
        assert fit.headroom == pytest.approx(fit.offset.p0 - max(fit.values))
    assert covered >= 4


def test_prefers_the_law_the_points_came_from():
    """Catches a swapped or mis-signed information criterion (or parameter counts ignored): offset-law points must
    prefer the offset law and log-linear points the log law, in most noise draws."""
    offset_wins = sum(fit_scaling(SIZES, offset_points(s), n_bootstrap=0).preferred == "offset" for s in range(5))
    log_fits = [fit_scaling(SIZES, log_points(s), n_bootstrap=0, criterion=c) for s in range(5) for c in ("aic", "bic")]
    assert offset_wins == 5
    assert sum(f.preferred == "log" for f in log_fits) >= 8
    assert all(f.delta == pytest.approx(getattr(f.log, f.criterion) - getattr(f.offset, f.criterion)) for f in log_fits)


def test_rmse_matches_a_direct_computation():
    """Catches an RMSE divided by the degrees of freedom, or computed on the wrong curve."""
    values = offset_points(3, noise=0.01)
    fit = fit_scaling(SIZES, values, n_bootstrap=0)
    o = fit.offset
    direct_offset = math.sqrt(np.mean((values - (o.p0 - (SIZES / o.n0) ** -o.a)) ** 2))
    slope, intercept = np.polyfit(np.log(SIZES), values, 1)
    direct_log = math.sqrt(np.mean((values - (slope * np.log(SIZES) + intercept)) ** 2))
    assert o.rmse == pytest.approx(direct_offset, rel=1e-9)
    assert fit.log.rmse == pytest.approx(direct_log, rel=1e-9)
    assert fit.log.slope == pytest.approx(slope)


def test_log_linear_points_leave_the_ceiling_unidentified():
    """Catches an over-confident report: straight points in log N (no bend) or a ceiling above MRR's maximum of 1
    must come back identified=False with the reason, not as a ceiling."""
    straight = fit_scaling(SIZES, log_points(1), n_bootstrap=100)
    assert not straight.identified
    assert any("log-linear limit" in r for r in straight.reasons)
    # points inside [0, 1] (points outside are refused) on a slow curve whose fitted ceiling is 1.05
    slow = 1.05 - (SIZES / TRUTH["n0"]) ** -0.1 + np.random.default_rng(1).normal(0, 0.002, len(SIZES))
    above_one = fit_scaling(SIZES, slow, n_bootstrap=0)
    assert not above_one.identified and any("exceeds 1" in r for r in above_one.reasons)
    assert fit_scaling(SIZES, slow, n_bootstrap=0, metric="loss_gain").identified


def test_a_point_far_above_the_curve_leaves_the_ceiling_unidentified():
    """Catches a 'ceiling' below what was measured: one size far above the others (seen in a real ladder where one
    size escaped a plateau the others stopped on) bends the fit flat under it; P0 must not be reported as a
    ceiling when the whole headroom interval is negative."""
    values = np.full(len(SIZES), 0.05) + np.random.default_rng(0).normal(0, 0.001, len(SIZES))
    values[1] = 0.18
    fit = fit_scaling(SIZES, values, n_bootstrap=200)
    assert fit.headroom_interval[1] < 0
    assert not fit.identified and any("above the fitted ceiling" in r for r in fit.reasons)
    assert fit_scaling(SIZES, offset_points(0), n_bootstrap=200).identified  # a clean bend stays identified


def test_per_user_metrics_average_to_metrics_from_ranks():
    """Catches a per-user definition that drifts from the evaluation's (then user resamples centre elsewhere), and
    multi-target rows (0 = padding) scored wrongly."""
    ranks = torch.randint(1, 60, (50,), generator=torch.Generator().manual_seed(0))
    reported = metrics_from_ranks(ranks, ks=(10,))
    for metric in ("mrr", "hr@10", "ndcg@10"):
        assert np.mean(per_user_metric(ranks.numpy(), metric)) == pytest.approx(reported[metric])
    rows = np.array([[2, 5, 0], [4, 0, 0], [0, 0, 0]])
    ideal = 1.0 + 1.0 / math.log2(3)
    expected = {"mrr": [0.5, 0.25], "hr@3": [1.0, 0.0], "recall@3": [0.5, 0.0],
                "ndcg@3": [1.0 / math.log2(3) / ideal, 0.0]}
    for metric, values in expected.items():
        got = per_user_metric(rows, metric)
        assert got[:2] == pytest.approx(values) and math.isnan(got[2]), metric
    with pytest.raises(ValueError, match="loss"):
        per_user_metric(rows, "loss")


def _paired_ranks(num_users: int, sizes: np.ndarray, seed: int = 0) -> list[np.ndarray]:
    """Geometric ranks whose MRR follows the offset law, coupled across sizes through one uniform per user."""
    from scipy import optimize

    uniforms = np.random.default_rng(seed).uniform(size=num_users)
    out = []
    for size in sizes:
        target = 0.3 - (size / 5e3) ** -0.4
        p = optimize.brentq(lambda q: -q * np.log(q) / (1 - q) - target, 1e-9, 1 - 1e-9)
        out.append(np.ceil(np.log1p(-uniforms) / np.log1p(-p)).astype(np.int64).clip(min=1))
    return out


def test_user_rank_bootstrap_resamples_the_same_users_at_every_size(tmp_path):
    """Catches resampling each size's users independently when all sizes share them: with ranks coupled across sizes,
    paired resamples keep the curve's shape, so the interval of a is much narrower than with unpaired resamples
    (one user fewer at one size forces those). Also reads ranks from .npy / .json / .pt through ranks_path."""
    sizes = np.round(np.geomspace(2e5, 5e7, 5))
    ranks = _paired_ranks(1500, sizes)
    rows = []
    for i, (size, r) in enumerate(zip(sizes, ranks)):
        name = f"r{i}" + (".npy", ".json", ".pt")[i % 3]
        if name.endswith(".npy"):
            np.save(tmp_path / name, r)
        elif name.endswith(".json"):
            (tmp_path / name).write_text(json.dumps({"ranks": r.tolist()}))
        else:
            torch.save(torch.from_numpy(r), tmp_path / name)
        rows.append(dict(task="A", backbone_params=f"{size:.0f}", mrr=np.mean(1.0 / r), ranks_path=name))
    write_csv(tmp_path / "results.csv", rows)
    paired = fit_csv(tmp_path / "results.csv", n_bootstrap=60)["A"]
    assert paired.bootstrap == "ranks" and paired.paired and paired.n_bootstrap_converged == 60

    unpaired = fit_scaling(sizes, [np.mean(1.0 / r) for r in ranks], ranks=[r[:-1] if i == 2 else r
                                                                           for i, r in enumerate(ranks)],
                           n_bootstrap=60)
    assert unpaired.bootstrap == "ranks" and unpaired.paired is False
    width = lambda fit: fit.offset.a_interval[1] - fit.offset.a_interval[0]  # noqa: E731
    assert width(paired) < 0.5 * width(unpaired)
    assert paired.offset.p0_interval[0] < 0.3 < paired.offset.p0_interval[1]


@pytest.mark.parametrize(
    ("sizes", "values", "match"),
    [
        ([1e5, 1e6, 1e7], [0.1, 0.2, 0.25], "3 points for task 'T'.*at least 4"),
        ([1e5, 1e6, 1e7, 1e8], [0.1, float("nan"), 0.25, 0.3], "non-finite value nan at point 1"),
        ([1e5, float("inf"), 1e7, 1e8], [0.1, 0.2, 0.25, 0.3], "non-finite size inf"),
        ([1e5, 0, 1e7, 1e8], [0.1, 0.2, 0.25, 0.3], "backbone size 0 for task 'T' is not positive"),
        ([1e5, 1e6, 1e6, 1e8], [0.1, 0.2, 0.25, 0.3], "duplicate backbone size 1e\\+06 for task 'T'"),
        # issue 27 F4: negative MRR values were fitted and reported "identified yes"
        ([1e5, 1e6, 1e7, 1e8], [-0.4, -0.3, -0.25, -0.2],
         r"mrr = -0.4 at size 100000 for task 'T' is outside \[0, 1\]"),
        ([1e5, 1e6, 1e7, 1e8], [[0.1, 0.1], [0.2, 1.2], [0.25, 0.2], [0.3, 0.3]], r"mrr = 1.2 at size 1e\+06"),
    ],
)
def test_bad_points_are_named(sizes, values, match):
    """Catches fits that silently run on too few, non-finite, non-positive or duplicated points."""
    with pytest.raises(ValueError, match=match):
        fit_scaling(sizes, values, task="T", n_bootstrap=0)


def test_bad_csvs_are_named(tmp_path):
    """Catches a CSV error that does not say which column, task, cell or ranks file is wrong."""
    path = tmp_path / "results.csv"
    write_csv(path, [dict(task="A", backbone_params=1e5, hr=0.1)])
    with pytest.raises(ValueError, match="lacks column 'mrr'"):
        fit_csv(path)
    write_csv(path, [dict(task="A", size=1e5, mrr=0.1)])
    with pytest.raises(ValueError, match="lacks columns 'backbone_params', 'mrr'|lacks column 'backbone_params'"):
        fit_csv(path)
    write_csv(path, two_task_rows())
    with pytest.raises(ValueError, match="unknown task 'C'.*'A', 'B'"):
        fit_csv(path, task="C", n_bootstrap=0)
    write_csv(path, two_task_rows() + [dict(task="C", backbone_params=n, mrr=0.1 + i / 10)
                                       for i, n in enumerate((1e5, 1e6, 1e7))])
    with pytest.raises(ValueError, match="3 points for task 'C'.*at least 4"):
        fit_csv(path, n_bootstrap=0)
    rows = two_task_rows()
    rows[1]["mrr"] = "oops"
    write_csv(path, rows)
    with pytest.raises(ValueError, match="column 'mrr' holds 'oops' \\(row 3"):
        fit_csv(path)
    rows = [dict(r, ranks_path="a.npy" if i == 0 else "") for i, r in enumerate(two_task_rows()[:7])]
    write_csv(path, rows)
    with pytest.raises(ValueError, match="ranks_path for some sizes but not for"):
        fit_csv(path)
    write_csv(path, [dict(r, ranks_path="missing.npy") for r in two_task_rows()[:7]])
    with pytest.raises(FileNotFoundError, match="missing.npy"):
        fit_csv(path)
    np.save(tmp_path / "zero.npy", np.array([1, 0, 2]))
    write_csv(path, [dict(r, ranks_path="zero.npy") for r in two_task_rows()[:7]])
    with pytest.raises(ValueError, match="zero.npy: ranks are 1-based"):
        fit_csv(path)


def test_cli_table_and_json(tmp_path, capsys):
    """Catches a `scaling fit` command that drops a task, ignores --task / --json, or crashes on a user error."""
    path = tmp_path / "results.csv"
    write_csv(path, two_task_rows())
    assert main(["scaling", "fit", str(path), "--bootstrap", "30", "--extrapolate", "xl=1e9"]) == 0
    table = capsys.readouterr().out
    assert "task A" in table and "task B" in table and "prefers offset" in table and "prefers log" in table
    assert "RMSE ×1e-3" in table and "headroom" in table and "identified  NO" in table and "at     xl" in table

    assert main(["scaling", "fit", str(path), "--task", "B", "--json", "--bootstrap", "0"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert list(data) == ["B"]
    assert set(data["B"]) >= {"offset", "log", "preferred", "headroom", "identified", "reasons", "extrapolations"}
    assert data["B"]["offset"]["p0_interval"] is None and data["B"]["bootstrap"] == "none"

    assert main(["scaling", "fit", str(path), "--task", "Z"]) == 2
    assert "genrec-hf scaling: error: unknown task 'Z'" in capsys.readouterr().err


def test_cli_plot_writes_a_png(tmp_path, capsys):
    """Catches a --plot that fails or writes nothing when matplotlib is installed."""
    pytest.importorskip("matplotlib")
    path = tmp_path / "results.csv"
    write_csv(path, two_task_rows())
    image = tmp_path / "scaling.png"
    assert main(["scaling", "fit", str(path), "--bootstrap", "20", "--plot", str(image)]) == 0
    assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    nested = tmp_path / "plots" / "new" / "x.png"  # a fresh checkout has no such folder: it is made, like mkdir -p
    assert main(["scaling", "fit", str(path), "--bootstrap", "0", "--plot", str(nested)]) == 0
    assert nested.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_unidentified_ceiling_prints_no_number(tmp_path, capsys):
    """Bug: `scaling fit` printed `P0 7.258` and `headroom 7.183` for an MRR when the ceiling was not identified,
    the reason only on a later line. Now a dash with the reason on the row, and --json keeps the raw estimates
    under a key that says they are not a ceiling."""
    path = tmp_path / "results.csv"
    write_csv(path, two_task_rows())
    raw = fit_csv(path, n_bootstrap=0)["B"]
    assert not raw.identified and raw.offset.p0 > 1
    assert main(["scaling", "fit", str(path), "--task", "B", "--bootstrap", "0"]) == 0
    table = capsys.readouterr().out
    p0_row = next(line for line in table.splitlines() if "offset law" in line)
    headroom_row = next(line for line in table.splitlines() if line.strip().startswith("headroom"))
    assert "P0 —  (not identified: " in p0_row and "a at its lower bound" in p0_row
    assert headroom_row.split()[1] == "—" and "no identified ceiling" in headroom_row
    for value in (raw.offset.p0, raw.headroom):
        assert f"{value:.4g}" not in table and f"{value:.3g}" not in table
    assert main(["scaling", "fit", str(path), "--task", "B", "--bootstrap", "0", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)["B"]
    assert data["offset"]["p0"] is None and data["headroom"] is None and data["headroom_interval"] is None
    assert data["unidentified_ceiling_raw_fit"]["p0"] == pytest.approx(raw.offset.p0)
    assert data["unidentified_ceiling_raw_fit"]["headroom"] == pytest.approx(raw.headroom)
    identified = fit_csv(path, n_bootstrap=0)["A"]
    assert identified.identified and "unidentified_ceiling_raw_fit" not in identified.to_dict()
    assert identified.to_dict()["offset"]["p0"] == pytest.approx(identified.offset.p0)


def test_to_dict_is_strict_json():
    """Catches NaN / inf / numpy scalars leaking into JSON output (json.dumps would write invalid JSON)."""
    fit = fit_scaling(SIZES, log_points(2), n_bootstrap=20)
    assert isinstance(fit, ScalingFit) and math.isinf(fit.offset.n0)
    json.dumps(fit.to_dict(), allow_nan=False)


def test_cli_plot_without_matplotlib_names_the_extra(tmp_path, capsys, monkeypatch):
    """Catches a raw ImportError traceback (or a fit run for nothing) when --plot is asked without matplotlib."""
    path = tmp_path / "results.csv"
    write_csv(path, two_task_rows())
    monkeypatch.setitem(__import__("sys").modules, "matplotlib", None)
    assert main(["scaling", "fit", str(path), "--task", "A", "B", "--plot", str(tmp_path / "x.png")]) == 2
    assert 'pip install "genrec-hf[plot]"' in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_one_seed_column_is_the_single_seed_fit_exactly():
    """Catches the seed pooling changing single-seed results (an extra random draw, a different mean): values of
    shape (sizes, 1) with one rank array per size give the very same fit and intervals as the plain call."""
    sizes = np.round(np.geomspace(2e5, 5e7, 5))
    ranks = _paired_ranks(400, sizes)
    values = np.array([np.mean(1.0 / r) for r in ranks])
    plain = fit_scaling(sizes, values, ranks=ranks, n_bootstrap=40)
    column = fit_scaling(sizes, values[:, None], ranks=[[r] for r in ranks], n_bootstrap=40)
    assert column.bootstrap == plain.bootstrap == "ranks" and column.seed_values is None
    assert column.offset.p0_interval == plain.offset.p0_interval
    assert column.headroom_interval == plain.headroom_interval


def test_pooled_seeds_fit_the_mean_and_put_seed_noise_into_the_intervals():
    """Catches pooling that fits one seed, flattens the seeds into extra points, or resamples users only: the point
    estimates are those of the per-size means, and when two seeds disagree the band is far wider than one seed's."""
    sizes = np.round(np.geomspace(2e5, 5e7, 5))
    ranks = _paired_ranks(800, sizes)
    worse = [r * 3 for r in ranks]  # a second training seed that ranks every target 3x lower, same users
    seeds = np.array([[np.mean(1.0 / a), np.mean(1.0 / b)] for a, b in zip(ranks, worse)])
    pooled = fit_scaling(sizes, seeds, ranks=[[a, b] for a, b in zip(ranks, worse)], n_bootstrap=80)
    means = fit_scaling(sizes, seeds.mean(axis=1), n_bootstrap=0)
    assert pooled.bootstrap == "ranks+seeds" and pooled.paired
    assert pooled.values == pytest.approx(seeds.mean(axis=1).tolist())
    assert pooled.offset.p0 == pytest.approx(means.offset.p0) and pooled.seed_values == seeds.tolist()
    single = fit_scaling(sizes, seeds[:, 0], ranks=ranks, n_bootstrap=80)
    grid = sizes[[0, -1]]
    width = lambda fit: np.subtract(*fit.predict_interval(grid)[::-1])  # noqa: E731
    assert np.all(width(pooled) > 2 * width(single))
    without_ranks = fit_scaling(sizes, seeds, n_bootstrap=80)
    assert without_ranks.bootstrap == "seeds" and without_ranks.offset.p0 == pytest.approx(means.offset.p0)
    with pytest.raises(ValueError, match="1 per-seed rank arrays at size 200000 for 2 seed value"):
        fit_scaling(sizes, seeds, ranks=[[a] for a in ranks], n_bootstrap=10)
    with pytest.raises(ValueError, match="cover \\[799, 800\\] users"):
        fit_scaling(sizes, seeds, ranks=[[a, b[:-1]] for a, b in zip(ranks, worse)], n_bootstrap=10)
    with pytest.raises(ValueError, match="non-finite value nan at point 1, seed column 1"):
        fit_scaling(sizes, np.where(np.arange(10).reshape(5, 2) == 3, np.nan, seeds), n_bootstrap=0)


def test_several_csvs_are_pooled_as_seeds_and_mismatches_are_named(tmp_path, capsys):
    """Catches `scaling fit a.csv b.csv` fitting only the first file, or pooling ladders that do not match (other
    sizes, the same seed twice, ranks in one file only) without saying which file is off."""
    sizes = np.round(np.geomspace(2e5, 5e7, 5))
    paths = []
    for seed in range(3):
        ranks = [r + seed for r in _paired_ranks(300, sizes, seed=seed)]
        folder = tmp_path / f"s{seed}"
        folder.mkdir()
        rows = []
        for i, (size, r) in enumerate(zip(sizes, ranks)):
            np.save(folder / f"r{i}.npy", r)
            rows.append(dict(task="A", backbone_params=f"{size:.0f}", mrr=np.mean(1.0 / r), seed=seed,
                             ranks_path=f"r{i}.npy"))
        write_csv(folder / "results.csv", rows)
        paths.append(folder / "results.csv")
    fit = fit_csv(paths, n_bootstrap=30)["A"]
    singles = [fit_csv(p, n_bootstrap=0)["A"].values for p in paths]
    assert fit.bootstrap == "ranks+seeds" and len(fit.seed_values[0]) == 3
    assert fit.values == pytest.approx(np.mean(singles, axis=0).tolist())
    assert main(["scaling", "fit", *map(str, paths), "--bootstrap", "20"]) == 0
    assert "mean of 3 seeds; 95% CI, ranks+seeds bootstrap" in capsys.readouterr().out
    if importlib.util.find_spec("matplotlib") is not None:  # the plot draws each seed's points beside the means
        image = tmp_path / "pooled.png"
        assert main(["scaling", "fit", *map(str, paths), "--bootstrap", "10", "--plot", str(image)]) == 0
        assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    with pytest.raises(ValueError, match="name one file twice"):
        fit_csv([paths[0], paths[0]])
    text = paths[2].read_text().splitlines()
    (tmp_path / "s2" / "short.csv").write_text("\n".join(text[:-1]) + "\n")  # one size fewer
    with pytest.raises(ValueError, match="short.csv has sizes .* pooled seeds need the same sizes"):
        fit_csv([paths[0], tmp_path / "s2" / "short.csv"], n_bootstrap=0)
    (tmp_path / "s0" / "same_seed.csv").write_text(paths[0].read_text())
    with pytest.raises(ValueError, match="both hold seed 0"):
        fit_csv([paths[0], tmp_path / "s0" / "same_seed.csv"], n_bootstrap=0)
    header, *body = paths[1].read_text().splitlines()
    (tmp_path / "s1" / "no_ranks.csv").write_text("\n".join([header.replace(",ranks_path", "")] +
                                                            [b.rsplit(",", 1)[0] for b in body]) + "\n")
    with pytest.raises(ValueError, match="no_ranks.csv gives no ranks_path"):
        fit_csv([paths[0], tmp_path / "s1" / "no_ranks.csv"], n_bootstrap=0)
