"""Variant minus baseline at equal size: per budget and model, the difference of their seed
means, with a 95% interval where both have >= 2 seeds per size.

This is not the verdict (which compares optima, envelope.py): at a fixed budget two variants
of one size took different numbers of steps, so a same-size gap mostly measures that. It is
what the per-size figure shows, labelled as such. The interval: each side's per-seed noise is
pooled over its family's sizes at that budget (sum(n_i - 1) degrees of freedom, as the
bootstrap pools it) and drawn as sigma^2 = ss / chi2_dof, so the difference of two means is
drawn from its Behrens-Fisher posterior; the two sides' draws are independent (runs of one
seed share their data order, which can only make this interval wider than needed). No torch.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from modexp.analysis.bootstrap import N_BOOT, fit_rng, interval, seed_noise
from modexp.analysis.roles import BASELINE, scores

COLUMNS = {"topk": ("loss", "losses"), "causal": ("loss_causal", "losses_causal")}


def _finite(v) -> np.ndarray:
    return np.asarray([x for x in v if np.isfinite(x)], float)


def _noise(means: pd.DataFrame, budget: float, variant: str, family: str, col: str):
    """(pooled ss, dof) of one variant's family at one budget, or None with any 1-seed size."""
    sel = means[(means.budget == budget) & (means.variant == variant) & (means.family == family)]
    got = seed_noise([_finite(v)[:, None] for v in sel[col]]) if len(sel) else None
    return None if got is None else (float(got[0][0, 0]), got[1])


def equal_size(means: pd.DataFrame, budget: float, roles: dict[str, str],
               n_boot: int = N_BOOT) -> list[dict]:
    """Every non-baseline variant against every baseline, at each model both trained at
    `budget`, on the variant's verdict metric (a MoD's causal loss, where it has one)."""
    here = means[means.budget == budget]
    metrics = scores(here) if not here.empty else {}
    out = []
    for v, r in roles.items():
        if r == BASELINE or v not in metrics:
            continue
        metric = metrics[v]
        if metric == "causal" and not here.loc[here.variant == v, "loss_causal"].notna().any():
            metric = None
        for b in (b for b, rb in roles.items() if rb == BASELINE and b in metrics):
            mine, base = (here[here.variant == w].set_index("model") for w in (v, b))
            for model in (m for m in mine.index if m in base.index):
                out.append(_one(budget, v, b, model, mine.loc[model], base.loc[model], metric,
                                means, n_boot))
    return out


def _one(budget, v, b, model, mine, base, metric, means, n_boot) -> dict:
    rec = {"variant": v, "baseline": b, "model": model, "family": mine.family,
           "params": float(mine.params), "metric": metric, "delta_loss": None,
           "delta_loss_ci": None, "draws": "independent"}
    if metric is None:
        return rec | {"reason": f"{v} has no causal eval loss"}
    col, seeds = COLUMNS[metric]
    delta = float(mine[col] - base.loss)
    if not np.isfinite(delta):
        return rec | {"reason": "no loss at this size"}
    rec["delta_loss"] = delta
    nv, nb = (_noise(means, budget, w, row.family, c) for w, row, c in
              ((v, mine, seeds), (b, base, "losses")))
    if nv is None or nb is None:
        return rec | {"reason": "one seed: no interval"}
    rng = fit_rng(float(budget), v, b, model, metric, "equal size")
    n_v, n_b = len(_finite(mine[seeds])), len(_finite(base.losses))
    var = (nv[0] / rng.chisquare(nv[1], n_boot) / n_v + nb[0] / rng.chisquare(nb[1], n_boot) / n_b)
    return rec | {"delta_loss_ci": interval(delta + rng.standard_normal(n_boot) * np.sqrt(var))}
