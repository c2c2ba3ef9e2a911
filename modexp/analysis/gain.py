"""Compute-equivalent gain: how many times the compute the baseline would need to reach a
variant's optimal loss ("MoD is worth X times the compute").

At a budget C where the variant's optimum is interior, its optimal loss L is read off the
baseline's frontier: the baseline's optimal loss at its MEASURED budgets, interpolated
linearly in log10(C) between neighbouring budgets; the C* where that line meets L, over C,
is the gain. No functional form is assumed for L_opt(C): a pure power law would make any
constant compute advantage look like a loss gap that shrinks with C, and an irreducible term
needs more budgets than an isoFLOP study has. Where L lies outside the baseline's measured
range the gain would be an extrapolation: "no verdict". Where the baseline's optimal loss
does not fall monotonically across the budgets it meets L at, the reading is ambiguous:
"no verdict".

The interval: per bootstrap draw, the variant's optimum draw is read off the baseline's
curve through its per-budget draws (independent streams, bootstrap.fit_rng), and the basic
bootstrap interval is taken in log10(gain). As for a loss difference's reading, every optimum
involved needs >= 90% interior refits, and of the draws where all are interior >= 90% must
cross the measured frontier once; else the share is the reason for no interval. No torch.
"""

from __future__ import annotations

import math

import numpy as np

from modexp.analysis.bootstrap import basic_interval
from modexp.naming import budget_tag

NO_VERDICT = "no verdict"
MIN_WITHIN = 0.9  # share of draws that must cross the measured frontier for an interval
TIE = 1e-9  # log10(C) crossings closer than this are one (a loss equal to a measured budget's)


def crossings(log_c: np.ndarray, L: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where the piecewise-linear curve L(log_c) meets target, per column.

    log_c (n,), L (n, m) or (n,), target (m,) or scalar. Returns (log10 C* or NaN, count of
    distinct crossings) per column; NaN where there is no crossing or more than one."""
    L = np.asarray(L, float).reshape(len(log_c), -1)
    t = np.broadcast_to(np.asarray(target, float), (L.shape[1],))
    a, b = L[:-1], L[1:]  # (n_seg, m) segment ends
    inside = (t >= np.minimum(a, b)) & (t <= np.maximum(a, b)) & np.isfinite(a) & np.isfinite(b)
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = np.where(b != a, (t - a) / (b - a), 0.0)
    at = log_c[:-1, None] + frac * np.diff(log_c)[:, None]  # (n_seg, m)
    hi = np.where(inside, at, -np.inf).max(axis=0)
    lo = np.where(inside, at, np.inf).min(axis=0)
    count = np.where(inside.any(axis=0), np.where(hi - lo <= TIE, 1, 2), 0)
    ok = (count == 1) & np.isfinite(t)
    return np.where(ok, lo, np.nan), count


def gain_at(budget: float, side: dict, frontier: list[tuple[float, dict]], name: str = "MoD",
            baseline: str = "vanilla") -> dict:
    """The gain of one optimum (`side`, an envelope dict) at `budget` against the baseline's
    envelopes at its measured budgets (`frontier`: [(budget, envelope)], any order)."""
    out = {"status": NO_VERDICT, "reason": None, "gain": None, "gain_ci": None,
           "baseline_flops": None, "read_between": None, "draws_within": None,
           "draws": "independent"}
    base = sorted((c, e) for c, e in frontier if e["status"] == "ok")
    if side["status"] != "ok":
        return out | {"reason": f"{name} has no optimum here"}
    if len(base) < 2:
        return out | {"reason": f"{baseline}'s optimum is interior at {len(base)} budget(s); "
                                "reading its frontier needs >= 2"}
    log_c = np.log10([c for c, _ in base])
    L = np.array([e["opt_loss"] for _, e in base])
    at, count = crossings(log_c, L, side["opt_loss"])
    if count[0] == 0:
        return out | {"reason": f"{name}'s optimal loss {side['opt_loss']:.4f} is outside "
                      f"{baseline}'s measured frontier ({L.max():.4f}..{L.min():.4f} over "
                      f"{budget_tag(base[0][0])}..{budget_tag(base[-1][0])} FLOPs): reading it would be "
                      "an extrapolation"}
    if count[0] > 1:
        return out | {"reason": f"{baseline}'s optimal loss does not fall monotonically across "
                      f"its budgets, so {name}'s loss {side['opt_loss']:.4f} meets it more than once"}
    k = int(np.searchsorted(log_c, at[0], side="right")) - 1
    k = min(max(k, 0), len(base) - 2)
    gain = 10 ** (at[0] - math.log10(budget))
    out |= {"status": "ok", "gain": float(gain), "baseline_flops": float(10 ** at[0]),
            "read_between": [float(base[k][0]), float(base[k + 1][0])]}
    draws = [e["draws"] for _, e in base]
    if side.get("draws") is None or any(d is None for d in draws):
        return out | {"reason": "no interval (an optimum without bootstrap draws)"}
    short = [f"only {100 * e['boot_interior']:.0f}% of {who}'s refits are interior"
             for who, e in [(name, side)] + [(f"{baseline} at {budget_tag(c)}", e) for c, e in base]
             if e["boot_interior"] < MIN_WITHIN]
    if short:  # as for a loss difference's reading (verdict._reading)
        return out | {"reason": "no interval: " + "; ".join(short) + f" (needs >= {100 * MIN_WITHIN:.0f}%)"}
    L_draws = np.stack([d.loss for d in draws])  # (n_budgets, n_boot)
    d_at, _ = crossings(log_c, L_draws, side["draws"].loss)
    finite = np.isfinite(side["draws"].loss) & np.isfinite(L_draws).all(axis=0)
    within = float(np.isfinite(d_at[finite]).mean()) if finite.any() else 0.0
    out["draws_within"] = within
    if within < MIN_WITHIN:
        return out | {"reason": f"no interval: only {100 * within:.0f}% of the bootstrap draws "
                      f"cross {baseline}'s measured frontier once (needs >= {100 * MIN_WITHIN:.0f}%)"}
    ci = basic_interval(math.log10(gain), d_at - math.log10(budget))
    return out | {"gain_ci": None if ci is None else [10 ** ci[0], 10 ** ci[1]]}
