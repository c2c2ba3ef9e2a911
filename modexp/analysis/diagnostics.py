"""Does the parabola fit? Diagnostics that can turn an isoFLOP fit into "no verdict".

A bootstrap interval around a parabola's minimum measures noise, not whether a parabola is
the right curve: a curve with a kink or a long flat arm gives a confident minimum in the
wrong place. Two checks, by what the data allow (no torch, no scipy):

- every size with >= 2 seeds: the classical lack-of-fit F test. The seed means' residual
  mean square about the parabola (weighted by seeds per size, n - 3 degrees of freedom) over
  the pooled seed variance (pure error, sum(n_i - 1) degrees of freedom) is F(n - 3,
  sum(n_i - 1)) distributed for a true parabola with normal seed noise; p < ALPHA fails.
  A true parabola passes it at 1 - ALPHA (tests/test_diagnostics.py).
- one seed (no pure error to test against): leave-one-size-out stability. The parabola is
  refitted without each size in turn; the fit is unstable if a refit's parabola has no
  minimum strictly inside the remaining grid or moves the optimum outside the full fit's 95%
  interval. It
  rejects the one-seed quickstart's vanilla fit of the previous release, where dropping the
  largest size moved the optimum out of the grid (tests/test_diagnostics.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from modexp.analysis.parabola import fit_parabola
from modexp.analysis.stats import f_sf
from modexp.analysis.text import compact

ALPHA = 0.01  # lack-of-fit test level: a true parabola fails it 1% of the time (why: docs/verdict.md)
STABLE_TOL = 1e-6  # relative slack on the interval's ends (noise-free data has a zero-width one)


@dataclass
class Diagnostic:
    """One fit's check: which test, whether it passed, its statistics, why it failed."""

    test: str  # "lack of fit" | "leave one size out"
    passed: bool
    stats: dict = field(default_factory=dict)  # JSON-able numbers
    reason: str | None = None  # set when it failed: what a "no verdict" says

    def to_json(self) -> dict:
        return {"test": self.test, "passed": self.passed, **self.stats,
                **({"reason": self.reason} if self.reason else {})}


def lack_of_fit(params, seed_losses: list, alpha: float = ALPHA) -> Diagnostic:
    """F test of the parabola over seed means against pooled seed noise (>= 2 seeds per size)."""
    x = np.log10(np.asarray(params, float))
    losses = [np.asarray(v, float) for v in seed_losses]
    means = np.array([v.mean() for v in losses])
    counts = np.array([len(v) for v in losses], float)
    # weighted by seeds per size, so every residual is measured in its own mean's noise
    fitted = np.polyval(np.polyfit(x, means, 2, w=np.sqrt(counts)), x)
    ss_lof, df1 = float((counts * (means - fitted) ** 2).sum()), len(x) - 3
    ss_pe, df2 = float(sum(((v - v.mean()) ** 2).sum() for v in losses)), int((counts - 1).sum())
    scale = 1e-18 * float(counts.sum()) * max(1.0, float(np.abs(means).max())) ** 2
    if ss_pe <= scale:  # seeds identical: only an exact parabola passes
        F, p = (0.0, 1.0) if ss_lof <= scale else (math.inf, 0.0)
    else:
        F = (ss_lof / df1) / (ss_pe / df2)
        p = f_sf(F, df1, df2)
    stats = {"F": F, "df": [df1, df2], "p": p, "alpha": alpha}
    if p >= alpha:
        return Diagnostic("lack of fit", True, stats)
    return Diagnostic("lack of fit", False, stats,
                      f"lack of fit: the parabola misses the seed means by more than seed noise "
                      f"(F = {F:.3g} on ({df1}, {df2}) df, p = {p:.3g} < {alpha})")


def leave_one_out(params, losses, params_ci: list[float] | None) -> Diagnostic:
    """Refit without each size: unstable if a refit has no interior minimum or leaves the
    full fit's interval (params_ci; without one, only the first rule applies)."""
    P, y = np.asarray(params, float), np.asarray(losses, float)
    refits, problem = [], None
    for j in range(len(P)):
        keep = np.arange(len(P)) != j
        f = fit_parabola(P[keep], y[keep], min_sizes=3, measured_edge=False)
        refits.append({"dropped_params": float(P[j]), "status": f.status,
                       "opt_params": None if f.status != "ok" else f.opt_params})
        if problem is not None:
            continue
        if f.status != "ok":
            problem = f"dropping the {compact(P[j])}-param size leaves no interior optimum ({f.reason})"
        elif params_ci is not None and not (params_ci[0] * (1 - STABLE_TOL) <= f.opt_params
                                            <= params_ci[1] * (1 + STABLE_TOL)):
            problem = (f"dropping the {compact(P[j])}-param size moves the optimum to "
                       f"{compact(f.opt_params)}, outside the fit's 95% interval "
                       f"[{compact(params_ci[0])}, {compact(params_ci[1])}]")
    stats = {"refits": refits}
    if problem is None:
        return Diagnostic("leave one size out", True, stats)
    return Diagnostic("leave one size out", False, stats, f"unstable: {problem}")
