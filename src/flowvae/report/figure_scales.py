"""Scales of the figures: a y range set by the settled curves, off-scale points, distinct colours, a density's zoom box.

NumPy, and matplotlib without pyplot state, so that the figures notebook and evaluate's latent grid share them
and the tests can check them on a bare Figure.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

SKIP_FRACTION = 0.2  # the first fifth of the epochs: far from the converged values, and where runs diverge
OFF_SCALE_NOTE = "off scale, drawn at the edge (\u25b2 above, \u25bc below)"


def settled(values: Sequence[float], skip: float = SKIP_FRACTION) -> np.ndarray:
    """The finite values of a curve (in epoch order) after its first `skip` of the points (at least its first point of 2+)."""
    v = np.asarray(values, dtype=np.float64)
    start = min(max(math.ceil(skip * len(v)), 1 if len(v) > 1 else 0), max(len(v) - 1, 0)) if skip > 0 else 0
    v = v[start:]
    return v[np.isfinite(v)]


def y_range(
    curves: Iterable[Sequence[float]],
    skip: float = SKIP_FRACTION,
    percentiles: tuple[float, float] = (0.5, 99.5),
    margin: float = 0.08,
    spread: float = 10.0,
    extend: float = 1.0,
) -> tuple[float, float] | None:
    """A y range from the curves' settled values: what a reader compares, not an early or diverged value.

    Each curve (values in epoch order) loses its first `skip` of the epochs; a curve whose median then lies
    more than `spread` robust scales (the curves' median absolute deviation, at least 5% of the median) from
    the median curve has not converged and does not set the range. The range spans the given percentiles of
    the remaining values, widened to take in the converged curves' earlier values up to `extend` of that span
    beyond it, plus `margin` of the result on each side. None when no curve has a finite value.
    """
    full = [np.asarray(c, dtype=np.float64) for c in curves]
    full = [c for c in full if len(settled(c, skip))]
    if not full:
        return None
    parts = [settled(c, skip) for c in full]
    medians = np.array([np.median(s) for s in parts])
    centre = float(np.median(medians))
    scale = max(float(np.median(np.abs(medians - centre))), 0.05 * abs(centre), 1e-9)
    keep = [abs(m - centre) <= spread * scale for m in medians]
    pool = np.concatenate([s for s, k in zip(parts, keep) if k])
    lo, hi = (float(p) for p in np.percentile(pool, percentiles))
    early = np.concatenate([settled(c, 0.0) for c, k in zip(full, keep) if k])
    reach = extend * (hi - lo)
    lo, hi = min(lo, max(float(early.min()), lo - reach)), max(hi, min(float(early.max()), hi + reach))
    pad = margin * (hi - lo) if hi > lo else max(abs(hi), 1.0) * 0.05
    return lo - pad, hi + pad


def off_scale(values: Sequence[float], limits: tuple[float, float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The values clipped to `limits`, and masks of those above and below it (NaN stays NaN, in neither mask)."""
    v = np.asarray(values, dtype=np.float64)
    lo, hi = limits
    with np.errstate(invalid="ignore"):
        above, below = v > hi, v < lo
    return np.clip(v, lo, hi), above, below


COLORBLIND = ("#0173b2", "#de8f05", "#029e73", "#d55e00", "#cc78bc", "#ca9161", "#fbafe4", "#949494", "#ece133", "#56b4e9")
# Ten more, picked greedily from seaborn's "dark", tab20 and Kelly's colours of maximum contrast, each the farthest
# (in RGB) from those before it: any two of the twenty are at least 0.19 apart.
FARTHEST_TEN = ("#591e71", "#8c0800", "#12711c", "#001c7f", "#8db600", "#dbdb8d", "#8c564b", "#9edae5", "#ff9896", "#be0032")


def distinct_colors(n: int) -> list[tuple[float, float, float]]:
    """n colours that can be told apart, in order: seaborn's colour-blind palette (10), then ten more far from
    them (20), then evenly spaced hues of alternating lightness."""
    from matplotlib import colors

    if n <= 20:
        return [colors.to_rgb(c) for c in (COLORBLIND + FARTHEST_TEN)[:n]]
    return [tuple(colors.hsv_to_rgb((i / n, 0.85, 0.95 if i % 2 else 0.6))) for i in range(n)]


def mass_box(
    x: Sequence[float],
    y: Sequence[float],
    density: np.ndarray,
    mass: float = 0.99,
    margin: float = 0.15,
    min_cells: int = 3,
    square: bool = True,
) -> tuple[float, float, float, float]:
    """(x0, x1, y0, y1): a box on the grid (x, y ascending; density[i, j] at (x[j], y[i])) that holds the
    densest cells making up `mass` of the total, widened by `margin` of its span and to at least `min_cells`
    cells each way, made square (about its centre) if asked, and kept within the grid."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    p = np.nan_to_num(np.asarray(density, dtype=np.float64), nan=0.0, posinf=0.0)
    if p.shape != (len(y), len(x)):
        raise ValueError(f"density has shape {p.shape}; the grid is {len(y)} x {len(x)}")
    total = p.sum()
    if not total > 0:
        return float(x[0]), float(x[-1]), float(y[0]), float(y[-1])
    flat = np.sort(p.ravel())[::-1]
    level = flat[min(np.searchsorted(np.cumsum(flat), mass * total), flat.size - 1)]
    rows, cols = np.nonzero(p >= level)
    dx, dy = (x[-1] - x[0]) / max(len(x) - 1, 1), (y[-1] - y[0]) / max(len(y) - 1, 1)
    x0, x1, y0, y1 = x[cols.min()], x[cols.max()], y[rows.min()], y[rows.max()]
    half_x = max((x1 - x0) / 2 * (1 + 2 * margin) + dx / 2, min_cells * dx / 2)
    half_y = max((y1 - y0) / 2 * (1 + 2 * margin) + dy / 2, min_cells * dy / 2)
    if square:
        half_x = half_y = max(half_x, half_y)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    # shift a box that crosses the grid's edge back inside it before cutting it there
    cx = min(max(cx, x[0] + half_x), x[-1] - half_x) if 2 * half_x < x[-1] - x[0] else (x[0] + x[-1]) / 2
    cy = min(max(cy, y[0] + half_y), y[-1] - half_y) if 2 * half_y < y[-1] - y[0] else (y[0] + y[-1]) / 2
    return (float(max(cx - half_x, x[0])), float(min(cx + half_x, x[-1])),
            float(max(cy - half_y, y[0])), float(min(cy + half_y, y[-1])))


def box_mass(x: Sequence[float], y: Sequence[float], density: np.ndarray, box: tuple[float, float, float, float]) -> float:
    """The fraction of the density's grid mass inside `box` (x0, x1, y0, y1)."""
    x, y = np.asarray(x), np.asarray(y)
    p = np.nan_to_num(np.asarray(density, dtype=np.float64), nan=0.0, posinf=0.0)
    inside = ((y >= box[2]) & (y <= box[3]))[:, None] & ((x >= box[0]) & (x <= box[1]))[None, :]
    return float(p[inside].sum() / p.sum())


def draw_clipped(ax, x: Sequence[float], y: Sequence[float], limits: tuple[float, float], color, style: str = "-") -> bool:
    """A line clipped to the y `limits` of `ax` (which it sets), its off-scale points as triangles at the edge
    (up at the top, down at the bottom); whether any point was off scale."""
    y, above, below = off_scale(y, limits)
    ax.plot(x, y, style, color=color, lw=1.4)
    for mask, marker, edge in ((above, "^", limits[1]), (below, "v", limits[0])):
        if mask.any():
            ax.plot(np.asarray(x)[mask], np.full(int(mask.sum()), edge), marker, color=color, ms=7, mec="black", mew=0.6,
                    clip_on=False, zorder=5, label="_off_scale")
    ax.set_ylim(limits)
    return bool(above.any() or below.any())


def off_scale_handle():
    """The legend entry of the off-scale triangles."""
    from matplotlib.lines import Line2D

    return Line2D([], [], ls="none", marker="^", color="0.5", mec="black", mew=0.6, ms=7, label=OFF_SCALE_NOTE)
