"""Scaling-law fits of a ranking metric against backbone size: offset power law vs log-linear, ceiling and headroom.

Per task, the validation metric P (MRR by default) of models that differ only in backbone size N (transformer blocks,
no embeddings or head) is fitted with

    offset power law   P(N) = P0 − (N / N0)^(−a),   a > 0        (3 parameters)
    log-linear         P(N) = slope · ln N + intercept           (2 parameters)

P0 is the ceiling that scale alone approaches; headroom = P0 − best measured P says how much a larger backbone can
still buy, and so whether effort should go to capacity or to the objective / item representation instead. The two
laws are compared by RMSE and an information criterion (AIC / BIC / AICc with 3 vs 2 parameters).

Intervals are percentile bootstraps: over evaluation users when per-user ranks are given (the sampling noise a ladder
really has), otherwise over the fit's residuals. A ceiling the data cannot pin down (P0 above the metric's maximum,
estimates or intervals at the optimiser's bounds, too few points, no convergence) is still reported, but with
`identified=False` and the reasons, so it is not read as a ceiling. Metrics are higher-is-better.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy import optimize, stats

from ..evaluation.statistics import per_user_values

REQUIRED_COLUMNS = ("backbone_params", "task")
RANKS_COLUMN = "ranks_path"
CRITERIA = ("aic", "bic", "aicc")
OFFSET_PARAMS = 3
LOG_PARAMS = 2
_BOUNDED_METRIC = re.compile(r"^(mrr|(hr|ndcg|recall)@\d+)$")
_BOUND_REASONS = {
    "a at its lower bound": "a at its lower bound: the log-linear limit, no ceiling in sight",
    "a at its upper bound": "a at its upper bound: the curve is already flat, so a and N0 are not pinned",
    "no rise with size": "the points do not rise with size",
}


@dataclass
class OffsetPowerLawFit:
    """`P(N) = p0 − (N / n0)^(−a)` fitted by bounded least squares from several starts."""

    p0: float
    a: float
    n0: float  # inf when the fit runs off to the degenerate (log-linear) limit; log10_n0 stays finite
    log10_n0: float
    rmse: float
    rss: float
    aic: float
    bic: float
    aicc: float | None
    converged: bool
    message: str
    n_starts: int
    n_converged: int
    n_at_best: int
    at_bounds: list[str] = field(default_factory=list)
    p0_interval: tuple[float, float] | None = None
    a_interval: tuple[float, float] | None = None
    n0_interval: tuple[float, float] | None = None

    def predict(self, sizes: Sequence[float] | np.ndarray) -> np.ndarray:
        return _offset_law(np.asarray(sizes, dtype=float), self.p0, self.a, self.log10_n0)

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(asdict(self))


@dataclass
class LogLinearFit:
    """`P(N) = slope · ln N + intercept` (ordinary least squares)."""

    slope: float
    intercept: float
    slope_stderr: float
    rmse: float
    rss: float
    aic: float
    bic: float
    aicc: float | None

    def predict(self, sizes: Sequence[float] | np.ndarray) -> np.ndarray:
        return self.slope * np.log(np.asarray(sizes, dtype=float)) + self.intercept

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(asdict(self))


@dataclass
class Extrapolation:
    """Both laws' prediction at a size beyond (or inside) the ladder, with bootstrap intervals."""

    name: str
    size: float
    offset: float
    offset_interval: tuple[float, float] | None
    log: float
    log_interval: tuple[float, float] | None

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(asdict(self))


@dataclass
class ScalingFit:
    """Both laws for one task, which one the criterion prefers, the ceiling, headroom and extrapolations."""

    task: str | None
    metric: str
    sizes: list[float]
    values: list[float]
    offset: OffsetPowerLawFit
    log: LogLinearFit
    criterion: str
    delta: float  # criterion(log) − criterion(offset): > 0 favours the offset law
    preferred: str  # "offset" or "log"
    evidence: str  # |delta| < 2 weak, < 6 positive, < 10 strong, else very strong
    best_value: float
    best_size: float
    headroom: float
    headroom_interval: tuple[float, float] | None
    identified: bool
    reasons: list[str]
    bootstrap: str  # "ranks", "ranks+seeds", "seeds", "residuals" or "none"
    n_bootstrap: int
    n_bootstrap_converged: int
    paired: bool | None  # ranks bootstrap: the same users resampled at every size
    confidence: float
    extrapolations: list[Extrapolation]
    notes: list[str] = field(default_factory=list)
    bootstrap_params: np.ndarray | None = field(default=None, repr=False)  # (B, 3): p0, a, log10 n0 per refit
    size_name: str = "backbone size"  # what the sizes count (a data-size fit: "train_events")
    seed_values: list[list[float]] | None = None  # (sizes, seeds) per-seed values; `values` are their means

    def predict_interval(self, sizes: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """Pointwise percentile band of the offset law at `sizes` from the bootstrap refits (None without them)."""
        if self.bootstrap_params is None or len(self.bootstrap_params) < 2:
            return None
        p0, a, log10_n0 = (self.bootstrap_params[:, i : i + 1] for i in range(3))
        curves = _offset_law(np.asarray(sizes, dtype=float)[None, :], p0, a, log10_n0)
        tail = 50.0 * (1.0 - self.confidence)
        return np.percentile(curves, tail, axis=0), np.percentile(curves, 100.0 - tail, axis=0)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe fields. An unidentified ceiling has no number: `offset.p0`, `headroom` and their intervals
        are None, and the raw estimates stay under `unidentified_ceiling_raw_fit` (not a ceiling; see `reasons`)."""
        data = {k: v for k, v in asdict(self).items() if k not in ("offset", "log", "extrapolations",
                                                                      "bootstrap_params")}
        data.update(offset=self.offset.to_dict(), log=self.log.to_dict(),
                    extrapolations=[e.to_dict() for e in self.extrapolations])
        if not self.identified:
            data["unidentified_ceiling_raw_fit"] = {
                "p0": self.offset.p0, "p0_interval": self.offset.p0_interval, "headroom": self.headroom,
                "headroom_interval": self.headroom_interval}
            data["offset"].update(p0=None, p0_interval=None)
            data.update(headroom=None, headroom_interval=None)
        return _jsonable(data)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def _offset_law(sizes: np.ndarray, p0: Any, a: Any, log10_n0: Any) -> np.ndarray:
    return p0 - np.exp(-a * (np.log(sizes) - np.log(10.0) * log10_n0))


def _power_of_ten(exponent: float) -> float:
    return 10.0 ** exponent if exponent < 308 else math.inf


def _criteria(rss: float, values: np.ndarray, k: int) -> tuple[float, float, float | None]:
    """Gaussian AIC, BIC and AICc of a k-parameter fit to `values` from its residual sum of squares (floored relative
    to the values' spread, so a perfect fit stays finite)."""
    n, scale = len(values), max(float(np.ptp(values)), 1e-12)
    rss = max(rss, n * (1e-12 * scale) ** 2)
    aic = n * math.log(rss / n) + 2 * k
    bic = n * math.log(rss / n) + k * math.log(n)
    aicc = aic + 2 * k * (k + 1) / (n - k - 1) if n - k - 1 > 0 else None
    return aic, bic, aicc


# ---------------------------------------------------------------------------------------------------------------------
# The offset power law as P = p0 − c · exp(−a · x), x = ln(N / N_ref), c = (N_ref / n0)^a > 0. For a fixed a the model
# is linear in (p0, c), so both are solved exactly (variable projection) and bounded `least_squares` runs over ln a
# alone, from several starts. This stays well conditioned in the degenerate direction (a → 0, p0 and c → ∞ together,
# i.e. the log-linear limit) where a joint 3-parameter search crawls; n0 follows from c and a.


@dataclass
class _Problem:
    x: np.ndarray  # ln(N / N_ref)
    log_n_ref: float
    scale: float  # spread of the values
    c_min: float
    lower: float  # bounds on ln a
    upper: float


def _problem(sizes: np.ndarray, values: np.ndarray, a_bounds: tuple[float, float]) -> _Problem:
    log_n_ref = float(np.mean(np.log(sizes)))
    scale = max(float(np.ptp(values)), 1e-6 * float(np.max(np.abs(values))), 1e-12)
    return _Problem(np.log(sizes) - log_n_ref, log_n_ref, scale, 1e-12 * scale, math.log(a_bounds[0]),
                    math.log(a_bounds[1]))


def _linear_part(problem: _Problem, a: float, y: np.ndarray) -> tuple[float, float]:
    """The least-squares (p0, c) at this a, with c >= c_min (exact: the profile in c is a clipped quadratic)."""
    u = np.exp(-a * problem.x)
    du, dy = u - u.mean(), y - y.mean()
    var = float(du @ du)
    c = max(-float(du @ dy) / var if var > 0 else problem.c_min, problem.c_min)
    return float(y.mean() + c * u.mean()), c


def _residuals(theta: np.ndarray, problem: _Problem, y: np.ndarray) -> np.ndarray:
    a = math.exp(theta[0])
    p0, c = _linear_part(problem, a, y)
    return p0 - c * np.exp(-a * problem.x) - y


def _solve(problem: _Problem, y: np.ndarray, a_starts: Sequence[float]) -> tuple[Any, int, int]:
    """The best of bounded `least_squares` runs over ln a: (result, #converged, #converged at the best cost)."""
    margin = 1e-9 * (problem.upper - problem.lower)
    results = []
    for a0 in a_starts:
        theta0 = [min(max(math.log(a0), problem.lower + margin), problem.upper - margin)]
        results.append(optimize.least_squares(_residuals, theta0, bounds=([problem.lower], [problem.upper]),
                                              args=(problem, y), method="trf", diff_step=1e-6, max_nfev=200))
    converged = [r for r in results if r.success]
    best = min(converged or results, key=lambda r: r.cost)
    tolerance = 1e-6 * best.cost + len(y) * (1e-8 * problem.scale) ** 2
    at_best = sum(1 for r in converged if r.cost - best.cost <= tolerance)
    return best, len(converged), at_best


def _a_starts(a_bounds: tuple[float, float], random_starts: int, rng: np.random.Generator) -> list[float]:
    grid = [a for a in (0.01, 0.05, 0.2, 0.5, 1.0, 2.0) if a_bounds[0] <= a <= a_bounds[1]]
    low, high = math.log(a_bounds[0]), math.log(a_bounds[1])
    return (grid or [math.sqrt(a_bounds[0] * a_bounds[1])]) + [math.exp(rng.uniform(low, high))
                                                               for _ in range(random_starts)]


def _unpack(problem: _Problem, theta: np.ndarray, y: np.ndarray) -> tuple[float, float, float, list[str]]:
    """(p0, a, log10 n0, bounds hit) of a solution."""
    a = math.exp(float(theta[0]))
    p0, c = _linear_part(problem, a, y)
    near = math.log(1.5)  # within a factor 1.5 of a bound: over any real ladder a ≈ a_min is the log-linear limit
    hit = []
    if theta[0] - problem.lower <= near:
        hit.append("a at its lower bound")
    elif problem.upper - theta[0] <= near:
        hit.append("a at its upper bound")
    if c <= problem.c_min * (1 + 1e-9):
        hit.append("no rise with size")
    return p0, a, (problem.log_n_ref + math.log(c) / a) / math.log(10.0), hit


def _log_law(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    regression = stats.linregress(x, y)
    return float(regression.slope), float(regression.intercept), float(regression.stderr)


def load_ranks(path: str | Path) -> np.ndarray:
    """1-based per-user ranks saved as .pt (tensor), .npy or .json (a list, or {"ranks": [...]}), checked."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ranks file {path} does not exist.")
    suffix = path.suffix.lower()
    if suffix == ".pt":
        loaded = torch.load(path, map_location="cpu", weights_only=True)
        ranks = loaded.numpy() if isinstance(loaded, torch.Tensor) else np.asarray(loaded)
    elif suffix == ".npy":
        ranks = np.load(path, allow_pickle=False)
    elif suffix == ".json":
        loaded = json.loads(path.read_text())
        ranks = np.asarray(loaded["ranks"] if isinstance(loaded, dict) else loaded, dtype=float)
    else:
        raise ValueError(f"ranks file {path}: expected .pt, .npy or .json, got {suffix or 'no suffix'!r}.")
    ranks = np.asarray(ranks)
    if ranks.ndim not in (1, 2) or ranks.shape[0] == 0:
        raise ValueError(f"ranks file {path}: expected (users,) or (users, targets) ranks, got shape {ranks.shape}.")
    if not np.all(np.isfinite(ranks)) or not np.all(ranks == np.round(ranks)):
        raise ValueError(f"ranks file {path}: ranks must be finite integers.")
    if ranks.min() < (1 if ranks.ndim == 1 else 0):
        raise ValueError(f"ranks file {path}: ranks are 1-based (0 pads a 2-d row); found {int(ranks.min())}.")
    return ranks.astype(np.int64)


# ---------------------------------------------------------------------------------------------------------------------


def _check_inputs(sizes: Any, values: Any, task: str | None, min_points: int) -> tuple[np.ndarray, np.ndarray]:
    where = f" for task {task!r}" if task is not None else ""
    sizes, values = np.asarray(sizes, dtype=float).ravel(), np.asarray(values, dtype=float).ravel()
    if sizes.shape != values.shape:
        raise ValueError(f"{len(sizes)} sizes but {len(values)} values{where}.")
    if len(sizes) < min_points:
        raise ValueError(f"{len(sizes)} points{where}: a scaling fit needs at least {min_points} sizes "
                         f"(the offset power law has {OFFSET_PARAMS} parameters).")
    for name, array in (("size", sizes), ("value", values)):
        bad = np.flatnonzero(~np.isfinite(array))
        if len(bad):
            raise ValueError(f"non-finite {name} {float(array[bad[0]])} at point {bad[0]}{where}.")
    if np.any(sizes <= 0):
        raise ValueError(f"backbone size {sizes[sizes <= 0][0]:g}{where} is not positive; sizes count parameters.")
    unique, counts = np.unique(sizes, return_counts=True)
    if np.any(counts > 1):
        raise ValueError(f"duplicate backbone size {unique[counts > 1][0]:g}{where}: one value per size (average "
                         "repeated runs first).")
    return sizes, values


def _interval(samples: np.ndarray, confidence: float) -> tuple[float, float] | None:
    samples = samples[np.isfinite(samples)]
    if len(samples) < 2:
        return None
    tail = 50.0 * (1.0 - confidence)
    low, high = np.percentile(samples, [tail, 100.0 - tail])
    return float(low), float(high)


def _evidence(delta: float) -> str:
    size = abs(delta)
    return "weak" if size < 2 else "positive" if size < 6 else "strong" if size < 10 else "very strong"


def fit_scaling(
    sizes: Sequence[float] | np.ndarray,
    values: Sequence[float] | np.ndarray,
    *,
    task: str | None = None,
    metric: str = "mrr",
    ranks: Sequence[np.ndarray | Sequence[np.ndarray]] | None = None,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    criterion: str = "aic",
    extrapolate_factors: Sequence[float] = (10.0, 100.0),
    extrapolate_sizes: Mapping[str, float] | None = None,
    upper_bound: float | None | str = "auto",
    a_bounds: tuple[float, float] = (1e-3, 5.0),
    random_starts: int = 8,
    min_points: int = 4,
) -> ScalingFit:
    """Fit the offset power law and the log-linear law to one task's (size, metric) points.

    `ranks`, when given, holds each size's per-user 1-based ranks (same order as `sizes`): intervals then resample
    users (the same user indices at every size when all sizes have the same number of users, i.e. were evaluated on
    the same users in the same order); otherwise they resample the offset fit's residuals.

    Repeated training seeds: `values` of shape (sizes, seeds) are fitted at their per-size means, and the intervals
    also resample the seeds (with replacement, the same draw at every size), so training noise is in them, not only
    evaluation noise. With ranks, give each size a list of per-seed rank arrays on the same users ("ranks+seeds");
    without ranks the seeds alone are resampled ("seeds"). `upper_bound` is the
    metric's largest possible value ("auto": 1 for mrr / hr@K / ndcg@K / recall@K, else none); a ceiling above it
    is not identified. `n_bootstrap=0` skips the intervals.
    """
    _check_options(criterion, confidence, n_bootstrap, a_bounds, min_points)
    points = _prepare_points(sizes, values, ranks, task, min_points)
    if upper_bound == "auto":
        upper_bound = 1.0 if _BOUNDED_METRIC.match(metric) else None
    if upper_bound is not None:  # a value outside the metric's range is another column or a bug, never a point
        bad = np.argwhere((points.seed_values < 0) | (points.seed_values > upper_bound))
        if len(bad):
            size, seed = bad[0]
            where = f" for task {task!r}" if task is not None else ""
            raise ValueError(f"{metric} = {points.seed_values[size, seed]:g} at size {points.sizes[size]:g}{where} "
                             f"is outside [0, {upper_bound:g}], the range of {metric}; fit another column with "
                             "--metric NAME (upper_bound=None in Python for an unbounded one).")
    rng = np.random.default_rng(seed)
    notes: list[str] = []
    starts = _a_starts(a_bounds, random_starts, rng)
    offset, offset_pred = _fit_offset(points, a_bounds, starts)
    log, log_pred = _fit_log(points)
    used, delta = _choose_law(offset, log, criterion, notes)
    targets = _extrapolation_targets(points.sizes, extrapolate_factors, extrapolate_sizes)
    boot = _Bootstrap.empty(len(targets))
    if n_bootstrap:
        per_user = _per_user_rank_values(points, metric, task) if points.ranks is not None else None
        boot = _bootstrap(points, per_user, offset_pred, log_pred, np.array([s for _, s in targets], dtype=float),
                          offset.a, starts, a_bounds, n_bootstrap, rng)
        _set_offset_intervals(offset, boot, confidence)
    headroom_interval = _interval(boot.headroom, confidence) if boot.converged else None
    reasons = _unidentified(points, offset, boot, headroom_interval, metric, upper_bound, n_bootstrap, confidence,
                            notes)
    extrapolations = [
        Extrapolation(name, size, float(offset.predict([size])[0]),
                      _interval(boot.offset_pred[:, j], confidence) if boot.converged else None,
                      float(log.predict([size])[0]),
                      _interval(boot.log_pred[:, j], confidence) if boot.mode != "none" else None)
        for j, (name, size) in enumerate(targets)
    ]
    best_index = int(np.argmax(points.values))
    return ScalingFit(
        task=task, metric=metric, sizes=points.sizes.tolist(), values=points.values.tolist(), offset=offset, log=log,
        criterion=used, delta=delta, preferred="offset" if delta > 0 else "log", evidence=_evidence(delta),
        best_value=float(points.values[best_index]), best_size=float(points.sizes[best_index]),
        headroom=float(offset.p0 - points.values[best_index]),
        headroom_interval=headroom_interval,
        identified=not reasons, reasons=reasons, bootstrap=boot.mode, n_bootstrap=int(n_bootstrap),
        n_bootstrap_converged=boot.converged, paired=boot.paired, confidence=confidence, extrapolations=extrapolations,
        notes=notes, bootstrap_params=boot.params if boot.converged else None,
        seed_values=points.seed_values.tolist() if points.n_seeds > 1 else None,
    )


# The steps of `fit_scaling`, in the order it runs them.


@dataclass
class _Points:
    """One task's points sorted by size: per-size values (means over seeds), per-seed values and ranks."""

    sizes: np.ndarray  # (n,)
    values: np.ndarray  # (n,)
    seed_values: np.ndarray  # (n, seeds)
    ranks: list[list[np.ndarray]] | None  # per size, one (users,) or (users, targets) array per seed

    @property
    def n(self) -> int:
        return len(self.sizes)

    @property
    def n_seeds(self) -> int:
        return self.seed_values.shape[1]


def _check_options(criterion: str, confidence: float, n_bootstrap: int, a_bounds: tuple[float, float],
                   min_points: int) -> None:
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {', '.join(CRITERIA)}; got {criterion!r}.")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1); got {confidence!r}.")
    if n_bootstrap < 0:
        raise ValueError(f"n_bootstrap must be >= 0; got {n_bootstrap!r}.")
    if not 0.0 < a_bounds[0] < a_bounds[1]:
        raise ValueError(f"a_bounds must be 0 < low < high; got {a_bounds!r}.")
    if min_points < OFFSET_PARAMS:
        raise ValueError(f"min_points must be >= {OFFSET_PARAMS} (the offset law's parameters); got {min_points}.")


def _prepare_points(sizes: Any, values: Any, ranks: Sequence[np.ndarray | Sequence[np.ndarray]] | None,
                    task: str | None, min_points: int) -> _Points:
    """Checked points sorted by size; (sizes, seeds) values are averaged per size, ranks listed per seed."""
    seed_values = np.asarray(values, dtype=float)
    if seed_values.ndim == 2:
        if seed_values.shape[1] < 1:
            raise ValueError(f"values of shape {seed_values.shape}: expected (sizes, seeds) with at least one seed.")
        bad = np.argwhere(~np.isfinite(seed_values))
        if len(bad):
            raise ValueError(f"non-finite value {seed_values[tuple(bad[0])]} at point {bad[0][0]}, seed column "
                             f"{bad[0][1]}{f' for task {task!r}' if task is not None else ''}.")
        values = seed_values.mean(axis=1)
    elif seed_values.ndim > 2:
        raise ValueError(f"values of shape {seed_values.shape}: expected (sizes,) or (sizes, seeds).")
    else:
        seed_values = seed_values.reshape(-1, 1)
    sizes, values = _check_inputs(sizes, values, task, min_points)
    order = np.argsort(sizes)
    points = _Points(sizes[order], values[order], seed_values[order], None)
    if ranks is not None:
        if len(ranks) != len(order):
            raise ValueError(f"{len(ranks)} rank arrays for {len(order)} sizes"
                             f"{f' of task {task!r}' if task is not None else ''}.")
        points.ranks = [_seed_ranks(ranks[i], points.n_seeds, points.sizes[j], task) for j, i in enumerate(order)]
    return points


def _fit_offset(points: _Points, a_bounds: tuple[float, float],
                starts: Sequence[float]) -> tuple[OffsetPowerLawFit, np.ndarray]:
    """The offset power law, best of the `starts`, and its prediction at each point."""
    sizes, values = points.sizes, points.values
    problem = _problem(sizes, values, a_bounds)
    best, n_converged, n_at_best = _solve(problem, values, starts)
    p0, a, log10_n0, at_bounds = _unpack(problem, best.x, values)
    prediction = _offset_law(sizes, p0, a, log10_n0)
    rss = float(np.sum((values - prediction) ** 2))
    aic, bic, aicc = _criteria(rss, values, OFFSET_PARAMS)
    fit = OffsetPowerLawFit(p0=p0, a=a, n0=_power_of_ten(log10_n0), log10_n0=log10_n0,
                            rmse=math.sqrt(rss / points.n), rss=rss, aic=aic, bic=bic, aicc=aicc,
                            converged=bool(n_converged), message=str(best.message), n_starts=len(starts),
                            n_converged=n_converged, n_at_best=n_at_best, at_bounds=at_bounds)
    return fit, prediction


def _fit_log(points: _Points) -> tuple[LogLinearFit, np.ndarray]:
    """The log-linear law by least squares, and its prediction at each point."""
    x = np.log(points.sizes)
    slope, intercept, slope_stderr = _log_law(x, points.values)
    prediction = slope * x + intercept
    rss = float(np.sum((points.values - prediction) ** 2))
    fit = LogLinearFit(slope, intercept, slope_stderr, math.sqrt(rss / points.n), rss,
                       *_criteria(rss, points.values, LOG_PARAMS))
    return fit, prediction


def _choose_law(offset: OffsetPowerLawFit, log: LogLinearFit, criterion: str, notes: list[str]) -> tuple[str, float]:
    """(criterion used, criterion(log) − criterion(offset)); AICc falls back to AIC when the points are too few."""
    used = criterion
    if criterion == "aicc" and (offset.aicc is None or log.aicc is None):
        used = "aic"
        notes.append(f"AICc needs at least {OFFSET_PARAMS + 2} points; compared by AIC instead.")
    return used, float(getattr(log, used) - getattr(offset, used))


def _extrapolation_targets(sizes: np.ndarray, factors: Sequence[float],
                           named: Mapping[str, float] | None) -> list[tuple[str, float]]:
    """(name, size) to extrapolate to: each factor times the largest size, then the named sizes."""
    targets = [(f"{factor:g}x", float(factor * sizes.max())) for factor in factors]
    for name, size in (named or {}).items():
        if not (math.isfinite(size) and size > 0):
            raise ValueError(f"extrapolation size {name}={size!r} must be a positive number.")
        targets.append((str(name), float(size)))
    return targets


def _per_user_rank_values(points: _Points, metric: str, task: str | None) -> list[np.ndarray]:
    """Per size, the (seeds, users) per-user metric values of its ranks; warns where their mean is not the value."""
    per_user = [np.stack([per_user_values(r, metric) for r in seeds]) for seeds in points.ranks or ()]
    for size, user_values, value_row in zip(points.sizes, per_user, points.seed_values):
        for seed_index, (row, value) in enumerate(zip(user_values, value_row)):
            mean = float(np.nanmean(row))
            if abs(mean - value) > max(1e-3, 1e-2 * abs(value)):
                which = f", seed column {seed_index}" if points.n_seeds > 1 else ""
                warnings.warn(f"{metric} {value:.6g} at size {size:g}{f' of task {task!r}' if task else ''}"
                              f"{which} differs from the mean over its per-user ranks ({mean:.6g}); are the "
                              "ranks from the same evaluation?", stacklevel=3)
    return per_user


@dataclass
class _Bootstrap:
    """What the bootstrap refits give: (B, 3) parameters p0, a, log10 n0, and per refit the headroom and both laws'
    predictions at the extrapolation targets."""

    mode: str
    paired: bool | None
    params: np.ndarray
    headroom: np.ndarray
    log_pred: np.ndarray
    offset_pred: np.ndarray
    converged: int = 0
    p0_at_bound_share: float = 0.0

    @classmethod
    def empty(cls, num_targets: int) -> _Bootstrap:
        nothing = np.empty((0, num_targets))
        return cls("none", None, np.empty((0, 3)), nothing, nothing, nothing)


def _bootstrap(points: _Points, per_user: list[np.ndarray] | None, offset_pred: np.ndarray, log_pred: np.ndarray,
               target_sizes: np.ndarray, a: float, starts: Sequence[float], a_bounds: tuple[float, float],
               n_bootstrap: int, rng: np.random.Generator) -> _Bootstrap:
    """Resample the points (users and seeds, seeds, or residuals), refit both laws to every sample."""
    mode, paired, samples, log_samples = _bootstrap_samples(points, per_user, offset_pred, log_pred, n_bootstrap, rng)
    x = np.log(points.sizes)
    coef, *_ = np.linalg.lstsq(np.column_stack([x, np.ones_like(x)]), log_samples.T, rcond=None)
    boot = _Bootstrap.empty(len(target_sizes))
    boot.mode, boot.paired = mode, paired
    boot.log_pred = (np.column_stack([np.log(target_sizes), np.ones_like(target_sizes)]) @ coef).T
    params, headroom, offset_preds, at_bound = [], [], [], 0
    for sample in samples:
        sample_problem = _problem(points.sizes, sample, a_bounds)
        result, converged_runs, _ = _solve(sample_problem, sample, [a])
        if not converged_runs:
            result, converged_runs, _ = _solve(sample_problem, sample, starts[:6])
        if not converged_runs:
            continue
        sample_p0, sample_a, sample_log10_n0, hits = _unpack(sample_problem, result.x, sample)
        at_bound += "a at its lower bound" in hits or "no rise with size" in hits
        params.append((sample_p0, sample_a, sample_log10_n0))
        headroom.append(sample_p0 - sample.max())
        offset_preds.append(_offset_law(target_sizes, sample_p0, sample_a, sample_log10_n0))
    boot.converged = len(params)
    if params:
        boot.params = np.array(params)
        boot.headroom = np.array(headroom)
        boot.offset_pred = np.array(offset_preds).reshape(len(params), len(target_sizes))
        boot.p0_at_bound_share = at_bound / len(params)
    return boot


def _bootstrap_samples(points: _Points, per_user: list[np.ndarray] | None, offset_pred: np.ndarray,
                       log_pred: np.ndarray, n_bootstrap: int, rng: np.random.Generator,
                       ) -> tuple[str, bool | None, np.ndarray, np.ndarray]:
    """(mode, paired, (B, n) samples the offset law refits, (B, n) samples the log law refits)."""
    n_seeds = points.n_seeds
    # One seed draw for every size (resampling the training runs); with one seed it is that seed every time.
    seed_draw = (rng.integers(0, n_seeds, size=(n_bootstrap, n_seeds)) if n_seeds > 1
                 else np.zeros((n_bootstrap, 1), dtype=np.int64))
    if per_user is not None:
        counts = {u.shape[1] for u in per_user}
        paired = len(counts) == 1
        shared_users = rng.integers(0, counts.pop(), size=(n_bootstrap, per_user[0].shape[1])) if paired else None
        columns = []
        for u in per_user:
            users = shared_users if paired else rng.integers(0, u.shape[1], size=(n_bootstrap, u.shape[1]))
            by_seed = np.nanmean(u[:, users], axis=2)  # (S, B): each seed's mean over the drawn users
            columns.append(np.take_along_axis(by_seed.T, seed_draw, axis=1).mean(axis=1))
        samples = np.stack(columns, axis=1)
        return ("ranks+seeds" if n_seeds > 1 else "ranks"), paired, samples, samples
    if n_seeds > 1:
        samples = np.stack([row[seed_draw].mean(axis=1) for row in points.seed_values], axis=1)
        return "seeds", None, samples, samples
    n, values = points.n, points.values
    inflate = math.sqrt(n / (n - OFFSET_PARAMS)) if n > OFFSET_PARAMS else 1.0
    residuals = (values - offset_pred) * inflate
    log_residuals = (values - log_pred) * math.sqrt(n / (n - LOG_PARAMS))
    indices = rng.integers(0, n, size=(n_bootstrap, n))
    samples = offset_pred + (residuals - residuals.mean())[indices]
    log_samples = log_pred + (log_residuals - log_residuals.mean())[indices]
    return "residuals", None, samples, log_samples


def _set_offset_intervals(offset: OffsetPowerLawFit, boot: _Bootstrap, confidence: float) -> None:
    """Percentile intervals of p0, a and n0 over the converged refits (none without them)."""
    if not boot.converged:
        return
    offset.p0_interval = _interval(boot.params[:, 0], confidence)
    offset.a_interval = _interval(boot.params[:, 1], confidence)
    log10_n0_interval = _interval(boot.params[:, 2], confidence)
    if log10_n0_interval:
        offset.n0_interval = (_power_of_ten(log10_n0_interval[0]), _power_of_ten(log10_n0_interval[1]))


def _unidentified(points: _Points, offset: OffsetPowerLawFit, boot: _Bootstrap,
                  headroom_interval: tuple[float, float] | None, metric: str, upper_bound: float | None,
                  n_bootstrap: int, confidence: float, notes: list[str]) -> list[str]:
    """Why the ceiling is not identified (empty when it is); notes what is worth saying but does not refuse it."""
    n = points.n
    reasons = []
    if n < OFFSET_PARAMS + 1:
        reasons.append(f"{n} points for {OFFSET_PARAMS} parameters leave no degree of freedom")
    if not offset.converged:
        reasons.append(f"no start converged ({offset.message})")
    if offset.at_bounds:
        reasons.extend(_BOUND_REASONS[hit] for hit in offset.at_bounds if hit != "a at its upper bound")
        if "a at its upper bound" in offset.at_bounds:
            notes.append(_BOUND_REASONS["a at its upper bound"] + " (P0 is the plateau)")
    if upper_bound is not None and offset.p0 > upper_bound:
        reasons.append(f"the raw P0 estimate exceeds {upper_bound:g}, the largest possible {metric}")
    if n_bootstrap:
        tail = (1.0 - confidence) / 2
        if boot.converged < 0.5 * n_bootstrap:
            reasons.append(f"only {boot.converged} of {n_bootstrap} bootstrap refits converged")
        if boot.p0_at_bound_share > tail:
            reasons.append(f"P0 interval unbounded above: {boot.p0_at_bound_share:.0%} of bootstrap refits run to "
                           "the log-linear limit or show no rise (the points do not bend enough to fix a ceiling)")
        elif upper_bound is not None and offset.p0_interval and offset.p0_interval[1] > upper_bound:
            reasons.append(f"P0 interval reaches {offset.p0_interval[1]:.4g} > {upper_bound:g}, the largest "
                           f"possible {metric}")
    else:
        notes.append("no bootstrap: intervals and their identification checks skipped")
    best = int(np.argmax(points.values))
    if headroom_interval is not None and headroom_interval[1] < 0:
        reasons.append(f"the best measured {metric} ({points.values[best]:.4g} at N = {points.sizes[best]:.3g}) "
                       f"lies above the fitted ceiling's whole interval (headroom up to {headroom_interval[1]:.3g}): a "
                       "point far off the curve, or a curve that does not rise")
    return reasons


def _seed_ranks(given: np.ndarray | Sequence[np.ndarray], n_seeds: int, size: float,
                task: str | None) -> list[np.ndarray]:
    """One size's ranks as a list with one array per seed (a bare array is one seed), checked against the values."""
    where = f" at size {size:g}{f' of task {task!r}' if task is not None else ''}"
    seeds = [np.asarray(given)] if isinstance(given, np.ndarray) else [np.asarray(r) for r in given]
    if len(seeds) != n_seeds:
        raise ValueError(f"{len(seeds)} per-seed rank arrays{where} for {n_seeds} seed value(s).")
    users = {r.shape[0] for r in seeds}
    if len(users) > 1:
        raise ValueError(f"the seeds' ranks{where} cover {sorted(users)} users: repeated runs must be evaluated on "
                         "the same users.")
    return seeds


def fit_csv(
    path: str | Path | Sequence[str | Path],
    task: str | Sequence[str] | None = None,
    *,
    metric: str = "mrr",
    size_column: str = "backbone_params",
    **kwargs: Any,
) -> dict[str, ScalingFit]:
    """`fit_scaling` per task of a results CSV, in file order (or the order of `task`).

    Columns: `backbone_params` (N, transformer blocks only), `task`, the metric column (`mrr` by default; any other
    numeric column such as `hr@10` can be named) and optionally `ranks_path`: a .pt / .npy / .json file of that
    size's per-user 1-based ranks, relative to the CSV's folder, for intervals over users. Other columns are ignored.
    `size_column` fits against another positive column instead of `backbone_params` (the scaling ladder's data-size
    axis: `train_events` or `train_users`).

    Several CSVs are several training seeds of one ladder (the same tasks and sizes, evaluated on the same users):
    each task is fitted at the per-size mean over the CSVs, and its intervals resample the seeds as well as the users.
    """
    paths = [Path(path)] if isinstance(path, (str, Path)) else [Path(p) for p in path]
    if not paths:
        raise ValueError("no results CSV given.")
    if len(set(p.resolve() for p in paths)) != len(paths):
        raise ValueError(f"results CSVs {[str(p) for p in paths]} name one file twice; each CSV is one seed.")
    frames = [_read_results(p, size_column, metric) for p in paths]
    if len(frames) > 1 and all("seed" in f.columns for f in frames):
        seen: dict[Any, Path] = {}
        for p, frame in zip(paths, frames):
            for value in frame["seed"].dropna().unique().tolist():
                if value in seen:
                    raise ValueError(f"{p} and {seen[value]} both hold seed {value}: pooled CSVs must be different "
                                     "training seeds of one ladder.")
                seen[value] = p
    available = list(dict.fromkeys(frames[0]["task"]))
    wanted = available if task is None else [task] if isinstance(task, str) else list(task)
    for p, frame in zip(paths, frames):
        have = set(frame["task"])
        unknown = [t for t in wanted if t not in have]
        if unknown:
            raise ValueError(f"unknown task {', '.join(map(repr, unknown))} in {p}; its tasks are "
                             f"{', '.join(map(repr, dict.fromkeys(frame['task'])))}.")
    fits = {}
    for name in wanted:
        points = [_task_points(p, frame, name, size_column, metric) for p, frame in zip(paths, frames)]
        sizes = points[0][0]
        for p, (other, _, _) in zip(paths[1:], points[1:]):
            if not np.array_equal(other, sizes):
                raise ValueError(f"task {name!r}: {p} has sizes {[f'{v:g}' for v in other]}, {paths[0]} has "
                                 f"{[f'{v:g}' for v in sizes]}; pooled seeds need the same sizes.")
        with_ranks = [r is not None for _, _, r in points]
        if any(with_ranks) and not all(with_ranks):
            lacking = [str(p) for p, has in zip(paths, with_ranks) if not has]
            raise ValueError(f"task {name!r}: {', '.join(lacking)} give{'s' if len(lacking) == 1 else ''} no "
                             f"{RANKS_COLUMN}; pooled seeds need per-user ranks in every CSV or in none.")
        if len(points) == 1:
            values, ranks = points[0][1], points[0][2]
        else:
            values = np.column_stack([v for _, v, _ in points])
            ranks = [[r[i] for _, _, r in points] for i in range(len(sizes))] if all(with_ranks) else None
        fits[name] = fit_scaling(sizes, values, task=name, metric=metric, ranks=ranks, **kwargs)
        if size_column != "backbone_params":
            fits[name].size_name = size_column
    return fits


def _read_results(path: Path, size_column: str, metric: str) -> Any:
    """A results CSV as a DataFrame, its size and metric columns numeric (errors name the file, row and column)."""
    if not path.is_file():
        raise FileNotFoundError(f"results CSV {path} does not exist.")
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not a readable CSV: {error}") from None
    required = (size_column, *REQUIRED_COLUMNS[1:])
    missing = [c for c in (*required, metric) if c not in frame.columns]
    if missing:
        raise ValueError(f"{path} lacks column{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))}; "
                         f"it has {', '.join(map(repr, frame.columns))}. Required: {size_column}, task and the "
                         f"metric ({metric!r}); optional: {RANKS_COLUMN}.")
    frame["task"] = frame["task"].astype(str)
    for column in (size_column, metric):
        numeric = pd.to_numeric(frame[column], errors="coerce")
        bad = numeric.isna() & frame[column].notna()
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise ValueError(f"{path}: column {column!r} holds {frame[column].iloc[row]!r} (row {row + 2} of the "
                             "file), not a number.")
        frame[column] = numeric
    return frame


def _task_points(path: Path, frame: Any, name: str, size_column: str,
                 metric: str) -> tuple[np.ndarray, np.ndarray, list[np.ndarray] | None]:
    """One task's (sizes, values, per-size ranks or None) from a results frame, in file order."""
    rows = frame[frame["task"] == name]
    ranks = None
    if RANKS_COLUMN in rows.columns:
        given = rows[RANKS_COLUMN].notna() & (rows[RANKS_COLUMN].astype(str).str.strip() != "")
        if given.any() and not given.all():
            absent = rows.loc[~given, size_column].tolist()
            raise ValueError(f"{path}: task {name!r} has {RANKS_COLUMN} for some sizes but not for "
                             f"{', '.join(f'{s:g}' for s in absent)}; give it for every size or none.")
        if given.all():
            ranks = [load_ranks(_resolve(path, str(p).strip())) for p in rows[RANKS_COLUMN]]
    sizes, values = rows[size_column].to_numpy(float), rows[metric].to_numpy(float)
    order = np.argsort(sizes, kind="stable")  # by size (as the fit orders them), so pooled seeds align
    return sizes[order], values[order], None if ranks is None else [ranks[i] for i in order]


def _resolve(csv_path: Path, ranks_path: str) -> Path:
    candidate = Path(ranks_path).expanduser()
    return candidate if candidate.is_absolute() else csv_path.parent / candidate


def _fmt(value: float | None, digits: int = 4) -> str:
    if value is None or not math.isfinite(value):
        return "inf" if value is not None and value > 0 else "n/a"
    return f"{value:.{digits}g}"


def _with_interval(value: float, interval: tuple[float, float] | None, digits: int = 4) -> str:
    text = _fmt(value, digits)
    return f"{text} [{_fmt(interval[0], digits)}, {_fmt(interval[1], digits)}]" if interval else text


def format_table(fits: Mapping[str, ScalingFit] | Sequence[ScalingFit]) -> str:
    """A plain-text report per task: P0, a, N0 with intervals, RMSE of both laws, preferred law, headroom. An
    unidentified ceiling prints a dash for P0 and headroom, with the reason on the same row."""
    blocks = []
    for fit in fits.values() if isinstance(fits, Mapping) else fits:
        o = fit.offset
        level = f"{fit.confidence:.0%} CI, {fit.bootstrap} bootstrap" if fit.bootstrap != "none" else "no intervals"
        seeds = f"mean of {len(fit.seed_values[0])} seeds; " if fit.seed_values else ""
        # an unidentified ceiling is no number: a dash, and why, on its row (headroom is measured from it)
        ceiling = (f"P0 {_with_interval(o.p0, o.p0_interval)}" if fit.identified
                   else f"P0 —  (not identified: {'; '.join(fit.reasons)})")
        headroom = (f"{_with_interval(fit.headroom, fit.headroom_interval)} over best" if fit.identified
                    else "—  (no identified ceiling);  best")
        lines = [
            f"task {fit.task} · {fit.metric} vs {fit.size_name} ({len(fit.sizes)} sizes "
            f"{_fmt(min(fit.sizes), 3)}–{_fmt(max(fit.sizes), 3)}; {seeds}{level})",
            f"  offset law  {ceiling}   a {_with_interval(o.a, o.a_interval)}   "
            f"N0 {_with_interval(o.n0, o.n0_interval, 3)}",
            f"  RMSE ×1e-3  offset {o.rmse * 1e3:.2f}  vs  log {fit.log.rmse * 1e3:.2f}   "
            f"{fit.criterion.upper()} prefers {fit.preferred} (Δ {fit.delta:+.2f}, {fit.evidence})",
            f"  headroom    {headroom} {fit.metric} {_fmt(fit.best_value)} at N = {_fmt(fit.best_size, 3)}",
        ]
        for e in fit.extrapolations:
            lines.append(f"  at {e.name:>6} (N = {_fmt(e.size, 3)})  offset "
                         f"{_with_interval(e.offset, e.offset_interval)}   log {_with_interval(e.log, e.log_interval)}")
        fit_state = "converged" if o.converged else "NOT converged"
        lines.append(f"  fit         {fit_state} ({o.n_converged}/{o.n_starts} starts, {o.n_at_best} at the best "
                     f"cost)" + (f"; bootstrap {fit.n_bootstrap_converged}/{fit.n_bootstrap} refits"
                                 if fit.n_bootstrap else ""))
        lines.append("  identified  yes" if fit.identified else "  identified  NO (the reasons are on the P0 row)")
        lines.extend(f"  note        {note}" for note in fit.notes)
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)
