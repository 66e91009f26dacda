"""Plot scaling fits: measured points, both laws, the ceiling P0 and the offset law's bootstrap band (log-x axis).

matplotlib is optional (the `plot` extra); it is imported only when a plot is drawn.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from .fit import ScalingFit


def require_matplotlib() -> None:
    """Raise a clear ImportError naming the extra when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401  (only checks that it is installed)
    except ImportError:
        raise ImportError('plotting needs matplotlib: pip install "genrec-hf[plot]"') from None


def plot_fits(fits: Mapping[str, ScalingFit] | Sequence[ScalingFit], path: str | Path, *,
              extend: float = 100.0) -> Path:
    """Write one panel per task to `path` (format from its suffix, e.g. .png / .pdf); curves run to `extend` × the
    largest size so the extrapolations are visible."""
    require_matplotlib()
    from matplotlib.figure import Figure

    fits = list(fits.values()) if isinstance(fits, Mapping) else list(fits)
    if not fits:
        raise ValueError("no fits to plot.")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = min(3, len(fits))
    rows = math.ceil(len(fits) / columns)
    figure = Figure(figsize=(4.8 * columns, 3.8 * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for ax, fit in zip(axes, fits):
        sizes = np.asarray(fit.sizes)
        grid = np.geomspace(sizes.min() / 2, sizes.max() * extend, 200)
        band = fit.predict_interval(grid)
        if band is not None:
            ax.fill_between(grid, band[0], band[1], color="C0", alpha=0.2,
                            label=f"offset law {fit.confidence:.0%} band")
        ax.plot(grid, fit.offset.predict(grid), color="C0",
                label=f"offset law (RMSE {fit.offset.rmse * 1e3:.2f}e-3)")
        ax.plot(grid, fit.log.predict(grid), color="C1", linestyle="--",
                label=f"log-linear (RMSE {fit.log.rmse * 1e3:.2f}e-3)")
        if fit.identified:
            ax.axhline(fit.offset.p0, color="C2", linestyle=":", label=f"P0 = {fit.offset.p0:.3g}")
        if fit.seed_values:
            seeds = np.asarray(fit.seed_values)
            ax.scatter(np.repeat(sizes, seeds.shape[1]), seeds.ravel(), color="grey", s=10, alpha=0.6, zorder=2,
                       label=f"each of {seeds.shape[1]} seeds")
        ax.scatter(sizes, fit.values, color="black", zorder=3,
                   label="mean over seeds" if fit.seed_values else "measured")
        shown = np.concatenate([np.asarray(fit.values), np.ravel(fit.seed_values or [])]
                               + ([np.array([fit.offset.p0])] if fit.identified else []))
        low, high = float(shown.min()), float(shown.max())
        margin = max(high - low, 1e-3 * max(abs(high), 1e-12))
        ax.set_ylim(max(low - margin, 0.0) if low >= 0 else low - margin, high + margin)  # the points, not a band
        ax.set_xscale("log")
        ax.set_xlabel("backbone parameters N" if fit.size_name == "backbone size" else fit.size_name)
        ax.set_ylabel(fit.metric)
        status = f"prefers {fit.preferred}" + ("" if fit.identified else ", P0 not identified")
        ax.set_title(f"{fit.task} ({status})", fontsize=10)
        ax.legend(fontsize=7, loc="lower right")
    for ax in axes[len(fits):]:
        ax.set_visible(False)
    figure.savefig(path, dpi=120)
    return path
