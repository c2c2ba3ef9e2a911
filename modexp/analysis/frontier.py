"""The compute-optimal frontier over budgets (Hoffmann et al. 2022, approach 2): per variant,
N_opt(C) = A C^a fitted to its envelope optima (envelope.py) at the budgets where they are
interior, with a 95% interval on the exponent from refitting the law to the per-budget
bootstrap draws (independent streams, bootstrap.fit_rng) index by index.

L_opt(C) is listed per budget with its interval but not fitted: a pure power law B C^b makes
any constant compute advantage look like a loss gap that shrinks with C (the gap follows
from the form, not the data), and an irreducible term E + B C^b has three coefficients that
the 2-4 budgets of an isoFLOP study cannot pin down. How much compute MoD saves is read off
the baseline's measured optimal losses instead (gain.py). A MoD variant's frontier is on its
causal eval loss where it has one (what the verdict scores, roles.verdict_metric), else on
top-k; `metric` says which. No torch.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from modexp.analysis.bootstrap import interval

NO_VERDICT = "no verdict"
LOSS_LAW = ("not fitted: a pure power law L = B C^b would make any constant compute advantage "
            "look like a shrinking loss gap, and an irreducible term needs more budgets than "
            "this study has; read the compute-equivalent gain instead")
BAND_POINTS = 50


def frontier(envs: pd.DataFrame) -> dict:
    """Per variant (plan order): its interior optima per budget and N_opt(C) = A C^a."""
    out = {}
    for v in dict.fromkeys(envs["variant"]):
        mine = envs[envs.variant == v]
        metric = "causal" if (mine.metric == "causal").any() else "topk"
        rows = mine[mine.metric == metric].sort_values("budget")
        ok = rows[rows.status == "ok"]
        if len(ok) < 2:
            out[v] = {"status": NO_VERDICT, "metric": metric, "n_budgets": len(ok),
                      "reason": f"interior optima at {len(ok)} budget(s); a frontier needs >= 2"}
            continue
        C = ok.budget.to_numpy(float)
        A, alpha = _power_law(C, ok.opt_params.to_numpy(float))
        draws = _law_draws(C, ok)
        rec = {"status": "ok", "reason": None, "metric": metric, "n_budgets": len(ok),
               "budgets": C.tolist(), "best_family": ok.best_family.tolist(),
               "opt_params": ok.opt_params.tolist(), "opt_params_ci": ok.opt_params_ci.tolist(),
               "opt_loss": ok.opt_loss.tolist(), "opt_loss_ci": ok.opt_loss_ci.tolist(),
               "params": {"coef": A, "exponent": alpha,
                          "exponent_ci": None if draws is None else interval(draws[1]),
                          "band": None if draws is None else _band(C, *draws)},
               "loss": {"status": "not fitted", "reason": LOSS_LAW},
               "note": ("exact through 2 points: no residuals, the interval comes from the "
                        "optima's own bootstrap draws only" if len(ok) == 2 else None)}
        out[v] = rec
    return out


def _power_law(C: np.ndarray, Y: np.ndarray) -> tuple[float, float]:
    """log10 Y = log10 A + alpha * log10 C: returns (A, alpha)."""
    alpha, log_a = np.polyfit(np.log10(C), np.log10(Y), 1)
    return float(10 ** log_a), float(alpha)


def _law_draws(C: np.ndarray, ok: pd.DataFrame) -> tuple[np.ndarray, np.ndarray] | None:
    """(log10 A, a) of the power law refitted to the budgets' params draws, index by index;
    None unless every budget has draws and at least half the indices are interior at all."""
    if any(d is None for d in ok.draws):
        return None
    Y = np.stack([d.params for d in ok.draws])  # (n_budgets, n_boot)
    keep = np.isfinite(Y).all(axis=0)
    if keep.sum() < Y.shape[1] / 2:
        return None
    slopes, logs = np.polyfit(np.log10(C), np.log10(Y[:, keep]), 1)
    return logs, slopes


def _band(C: np.ndarray, log_a: np.ndarray, slopes: np.ndarray) -> dict:
    """Pointwise 95% band of A C^a over the measured budgets, from the refitted draws."""
    cs = np.geomspace(C.min(), C.max(), BAND_POINTS)
    laws = 10 ** (log_a[None, :] + slopes[None, :] * np.log10(cs)[:, None])  # (points, draws)
    lo, hi = np.percentile(laws, [2.5, 97.5], axis=1)
    return {"flops": cs.tolist(), "lo": lo.tolist(), "hi": hi.tolist()}
