"""A variant's compute optimum at one budget: the envelope over its shape families.

Chinchilla searched depth and width together; a baseline fixed at one depth is only the best
model of that depth. Runs are fitted per family (a depth, or a shape rule: ModelConfig.family)
and the variant's optimum is the lowest family optimum. Choosing that family is part of the
estimate, so it is inside the bootstrap: draw i of the envelope is the minimum over the
families' draws i (their streams are independent: bootstrap.fit_rng has the family in the
fit's identity), and its loss interval is the basic bootstrap interval about the point
estimate (bootstrap.basic_interval), which corrects the low bias of a minimum over families.

A family without a verdict (an edge minimum, too few sizes, a failed diagnostic) has no
optimum to compare, so it decides whether the envelope has one:
- it is left out, with a note, when it is clearly worse: its floor, the lowest loss it could
  still reach, lies above the envelope's upper 95% bound;
- otherwise it could be the best, and the envelope is "no verdict", naming it.
A family's floor: with a verdict, its optimum's lower 95% bound; without one, its lowest
seed-mean loss less two standard errors and, when that lowest loss sits at the grid's edge,
less the most the curve can still fall beyond the edge if it is convex in log10(params):
the secant slope of its two edge-most sizes times the distance to the farthest size any
family of the variant measured at that budget on that side (at least one of its own grid
steps). A family with a verdict whose interval lies wholly above the best family's upper
bound is left out too (it would almost never win a draw, and its non-interior refits would
only blank envelope draws). An envelope draw is NaN (not interior) when a family still in
the running has no interior minimum in that draw: the share of finite draws is the
envelope's `boot_interior`, on which the verdict's readings rest.

The same rule combines variants of one role (e.g. several MoD treatments: verdict.py). No
torch, no matplotlib.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from modexp.analysis.bootstrap import Draws, basic_interval, interval

OK, NO_VERDICT = "ok", "no verdict"
ENVELOPE_COLUMNS = ["budget", "variant", "metric", "status", "reason", "best_family",
                    "opt_params", "opt_params_ci", "opt_loss", "opt_loss_ci", "boot_method",
                    "boot_interior", "n_sizes", "flag", "params_min", "params_max", "draws",
                    "floor", "contenders", "left_out", "families"]


def floor_of(member: dict, span: tuple[float, float]) -> float:
    """The lowest loss a member could still reach (see the module docstring). span: the
    log10(params) range every family of the variant measured at this budget."""
    if member["status"] == OK:
        ci = member.get("opt_loss_ci")
        return ci[0] if ci else member["opt_loss"]
    if member.get("points") is None:  # an envelope: its own floor
        return member.get("floor", -math.inf)
    x, y, se = member["points"]
    if len(x) < 2:
        return -math.inf
    j = int(np.argmin(y))
    low = y[j] - 2 * (se[j] if np.isfinite(se[j]) else 0.0)
    step = float(np.mean(np.diff(x)))
    if j == 0:
        reach = (y[1] - y[0]) / (x[1] - x[0]) * max(x[0] - span[0], step)
    elif j == len(x) - 1:
        reach = (y[-2] - y[-1]) / (x[-1] - x[-2]) * max(span[1] - x[-1], step)
    else:
        reach = 0.0
    return float(low - max(reach, 0.0))


def envelope(members: list[dict], span: tuple[float, float] = (math.inf, -math.inf),
             label: str = "family") -> dict:
    """The minimum over members (fit records, or envelopes, each with a "name"), with its
    draws, interval, the members still in the running and those left out (with a note)."""
    floors = {m["name"]: floor_of(m, span) for m in members}
    ok = [m for m in members if m["status"] == OK]
    out = {"status": NO_VERDICT, "best": None, "opt_params": math.nan, "opt_params_ci": None,
           "opt_loss": math.nan, "opt_loss_ci": None, "boot_method": None,
           "boot_interior": math.nan, "draws": None, "contenders": [], "left_out": {},
           "n_sizes": max((m.get("n_sizes", 0) for m in members), default=0),
           "floor": min(floors.values(), default=-math.inf)}
    if not ok:
        if len(members) == 1:
            return out | {"reason": members[0]["reason"]}
        return out | {"reason": f"no {label} has an interior optimum: "
                      + "; ".join(f"{m['name']}: {m['reason']}" for m in members)}
    best = min(ok, key=lambda m: m["opt_loss"])
    upper = best["opt_loss_ci"][1] if best.get("opt_loss_ci") else best["opt_loss"]
    contenders, left_out, blockers = [], {}, []
    for m in members:
        name, fl = m["name"], floors[m["name"]]
        if m is not best and fl > upper:
            left_out[name] = (f"{label} {name} left out: " + (
                f"its 95% interval starts at {fl:.4f}" if m["status"] == OK else
                f"no verdict ({m['reason']}), and it can fall no lower than {fl:.4f}")
                + f", above the best {label}'s upper bound {upper:.4f}")
        elif m["status"] == OK:
            contenders.append(m)
        else:
            blockers.append(f"{label} {name} could be the best: {m['reason']}; it could still "
                            f"reach {fl:.4f}, not above the best {label}'s upper bound {upper:.4f}")
    out |= {"best": best["name"], "contenders": [m["name"] for m in contenders],
            "left_out": left_out, "n_sizes": best.get("n_sizes", 0)}
    if blockers:
        return out | {"reason": "; ".join(blockers)}
    draws = min_draws([m.get("draws") for m in contenders])
    methods = {m.get("boot_method") for m in contenders}
    out |= {"status": OK, "reason": None, "opt_params": best["opt_params"],
            "opt_loss": best["opt_loss"], "draws": draws,
            "boot_method": methods.pop() if len(methods) == 1 else "mixed"}
    if draws is not None:
        out |= {"opt_params_ci": interval(draws.params),
                "opt_loss_ci": basic_interval(best["opt_loss"], draws.loss),
                "boot_interior": draws.interior}
    return out


def min_draws(draws: list[Draws | None]) -> Draws | None:
    """Per draw, the lowest member's (loss, params); NaN where any member's draw is NaN."""
    if not draws or any(d is None for d in draws):
        return None
    if len(draws) == 1:
        return draws[0]
    loss = np.stack([d.loss for d in draws])  # (members, n_boot)
    params = np.stack([d.params for d in draws])
    finite = np.isfinite(loss).all(axis=0)
    pick = np.nanargmin(np.where(np.isfinite(loss), loss, np.inf), axis=0)
    cols = np.arange(loss.shape[1])
    return Draws(np.where(finite, params[pick, cols], np.nan),
                 np.where(finite, loss[pick, cols], np.nan), "envelope")


def params_span(members: list[dict]) -> tuple[float, float]:
    """The log10(params) range the members' grids measured (envelope's `span`), empty when
    none measured any size."""
    lo = [m["params_min"] for m in members if np.isfinite(m["params_min"])]
    hi = [m["params_max"] for m in members if np.isfinite(m["params_max"])]
    return (math.log10(min(lo)), math.log10(max(hi))) if lo and hi else (math.inf, -math.inf)


def envelopes(fits: pd.DataFrame) -> pd.DataFrame:
    """One envelope row per (budget, variant, metric) of the family fits (isoflop.fit_isoflop)."""
    rows = []
    for (budget, variant, metric), g in fits.groupby(["budget", "variant", "metric"], sort=False):
        recs = [dict(r, name=r["family"]) for r in g.to_dict("records")]
        env = envelope(recs, params_span(recs))
        rows.append({"budget": budget, "variant": variant, "metric": metric,
                     **{k: env[k] for k in env if k != "best"}, "best_family": env["best"],
                     "flag": env["reason"] or "", "params_min": g["params_min"].min(),
                     "params_max": g["params_max"].max(),
                     "families": {r["family"]: r for r in recs}})
    return records_frame(rows, ENVELOPE_COLUMNS)


NUMERIC = {"budget", "n_sizes", "opt_params", "opt_loss", "boot_interior", "params_min",
           "params_max", "floor"}


def records_frame(recs: list[dict], columns: list[str]) -> pd.DataFrame:
    """Fit or envelope records as a table whose None stays None (pandas turns an all-None
    column into NaN, and a NaN interval or reason would read as present)."""
    return pd.DataFrame({c: pd.Series([r[c] for r in recs], dtype=float if c in NUMERIC else object)
                         for c in columns})
