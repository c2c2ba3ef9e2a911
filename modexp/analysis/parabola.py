"""An isoFLOP parabola and when its minimum counts (Hoffmann et al. 2022, approach 2).

At a fixed training budget, final loss against x = log10(params) is fitted by a parabola
loss = a x^2 + b x + c whose minimum, at 10^(-b / 2a) with loss c - b^2 / 4a, is the
compute-optimal size. Too few sizes, a downward parabola or a minimum at the grid's edge give
"no verdict" with the reason, never a number from an extrapolation. No torch, no matplotlib.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

MIN_SIZES = 4  # a parabola has 3 coefficients: 3 sizes leave no residual and no interval


@dataclass
class Fit:
    """An isoFLOP parabola, loss = a*x^2 + b*x + c with x = log10(params) (Hoffmann Approach 2).

    status "ok": an interior minimum, opt_* set; "no verdict": `reason` says why, opt_* NaN
    (an extrapolated minimum is never reported as a number)."""

    coeffs: tuple[float, float, float] | None
    opt_params: float
    opt_loss: float
    n_sizes: int
    reason: str | None

    @property
    def status(self) -> str:
        return "ok" if self.reason is None else "no verdict"


def fit_parabola(params, losses, min_sizes: int = MIN_SIZES, measured_edge: bool = True) -> Fit:
    """Fit loss against log10(params); no verdict for < min_sizes sizes, a downward parabola,
    or a minimum (fitted, or with measured_edge the lowest measured loss) at or beyond the
    grid's edge. Refits that leave one size out (diagnostics.py) take min_sizes 3 and judge
    the parabola's own minimum only."""
    x, y = np.log10(np.asarray(params, float)), np.asarray(losses, float)
    n = len(np.unique(x))
    coeffs = tuple(float(c) for c in np.polyfit(x, y, 2)) if n >= 3 else None
    nan = math.nan
    if n < min_sizes:
        return Fit(coeffs, nan, nan, n, f"fewer than {min_sizes} sizes ({n})")
    a, b, c = coeffs
    if a <= 0:
        return Fit(coeffs, nan, nan, n, "parabola opens downward (no minimum)")
    xo, lo, hi = -b / (2 * a), x.min(), x.max()
    if xo <= lo or measured_edge and np.argmin(y) == np.argmin(x):
        return Fit(coeffs, nan, nan, n, "minimum at or below the smallest size (extend the grid down)")
    if xo >= hi or measured_edge and np.argmin(y) == np.argmax(x):
        return Fit(coeffs, nan, nan, n, "minimum at or above the largest size (extend the grid up)")
    return Fit(coeffs, float(10 ** xo), float(c - b * b / (4 * a)), n, None)
