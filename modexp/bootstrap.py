"""Bootstrap intervals for isoFLOP optima (no torch, no matplotlib).

A parabola loss = a*x^2 + b*x + c in x = log10(params) (Hoffmann et al. 2022, approach 2) is
refitted on resampled data; each refit's minimum (10^(-b/2a), c - b^2/4a) is one draw of the
optimum. Resampling: the seeds of every size, when every size has >= 2 (the run-to-run noise
itself), else the fit's residuals (needs more sizes than the parabola's 3 coefficients).
Both rescale the resampled deviations (by sqrt(n/(n-1)) for seeds, sqrt(n/(n-3)) for
residuals) so their variance is unbiased: the plain bootstrap shrinks it by (n-1)/n, which
at 2-3 seeds would make a "95%" interval cover far less often (Besiroglu et al. 2024 on
over-narrow scaling-law intervals).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

N_BOOT = 2000
LEVEL = 0.95


@dataclass
class Draws:
    """Bootstrap draws of an optimum; NaN where a refit had no minimum inside the grid."""

    params: np.ndarray  # (n_boot,)
    loss: np.ndarray  # (n_boot,)
    method: str  # "seeds" | "residuals"

    @property
    def interior(self) -> float:
        """Share of refits with a minimum strictly inside the grid."""
        return float(np.isfinite(self.params).mean())


def parabola_optima(x: np.ndarray, Y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Minima of parabolas fitted to each column of Y (n, m) over x (n,); NaN outside (x.min, x.max)."""
    a, b, c = np.polyfit(x, Y, 2)  # each (m,)
    with np.errstate(divide="ignore", invalid="ignore"):
        xo = -b / (2 * a)
        ok = (a > 0) & (xo > x.min()) & (xo < x.max())
        return np.where(ok, 10.0 ** xo, np.nan), np.where(ok, c - b * b / (4 * a), np.nan)


def bootstrap_optimum(params, seed_losses: list, n_boot: int = N_BOOT, seed: int = 0) -> Draws | None:
    """Draws of the optimum from per-size seed losses (a list of arrays, one per size).

    None when neither resampling applies (a size without a loss, or <= 3 sizes of one seed).
    """
    x = np.log10(np.asarray(params, float))
    losses = [np.asarray(v, float) for v in seed_losses]
    if any(len(v) == 0 for v in losses):
        return None
    rng = np.random.default_rng(seed)
    means = np.array([v.mean() for v in losses])
    if all(len(v) >= 2 for v in losses):
        Y = np.empty((len(x), n_boot))
        for i, v in enumerate(losses):  # resample this size's seeds, mean, rescaled deviation
            n = len(v)
            resampled = v[rng.integers(0, n, (n_boot, n))].mean(axis=1)
            Y[i] = means[i] + math.sqrt(n / (n - 1)) * (resampled - means[i])
        return Draws(*parabola_optima(x, Y), "seeds")
    if len(x) <= 3:
        return None
    fitted = np.polyval(np.polyfit(x, means, 2), x)
    resid = (means - fitted) * math.sqrt(len(x) / (len(x) - 3))
    Y = fitted[:, None] + resid[rng.integers(0, len(x), (len(x), n_boot))]
    return Draws(*parabola_optima(x, Y), "residuals")


def interval(draws: np.ndarray, level: float = LEVEL) -> list[float] | None:
    """Percentile interval of the finite draws, or None when fewer than half are finite."""
    ok = draws[np.isfinite(draws)]
    if len(ok) < max(2, len(draws) / 2):
        return None
    tail = 100 * (1 - level) / 2
    return [float(np.percentile(ok, tail)), float(np.percentile(ok, 100 - tail))]
