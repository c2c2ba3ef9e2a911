"""The isoFLOP verdict: best MoD vs best vanilla per budget, the random-routing control, and
the compute-optimal frontier over budgets (Hoffmann et al. 2022, approach 2). No torch.

Every comparison is between fitted optima that are inside their grids (isoflop.fit_parabola);
its interval comes from the two fits' independent bootstrap draws (bootstrap.py). Anything
that rests on an extrapolated or missing optimum says "no verdict" and why.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from modexp.analysis.bootstrap import interval
from modexp.analysis.isoflop import Analysis, analyze, compact
from modexp.naming import budget_tag

NO_VERDICT = "no verdict"


def _nan_to_none(v):
    return None if v is None or (isinstance(v, float) and not math.isfinite(v)) else v


def _fit_json(f) -> dict:
    """One fit as the JSON keys the issue fixes (numbers only for an interior optimum)."""
    return {"status": f["status"], "reason": f["reason"], "n_sizes": int(f["n_sizes"]),
            "opt_params": _nan_to_none(f["opt_params"]), "opt_params_ci": f["opt_params_ci"],
            "opt_loss": _nan_to_none(f["opt_loss"]), "opt_loss_ci": f["opt_loss_ci"],
            "bootstrap": f["boot_method"], "bootstrap_interior": _nan_to_none(f["boot_interior"])}


def _delta(a, b) -> dict:
    """Loss of optimum a minus optimum b, with a 95% interval from their bootstrap draws.

    The two fits rest on different runs and draw from independent generators (bootstrap.fit_rng),
    so draw i of one minus draw i of the other is a draw of the difference of two independent
    estimates. Runs of one seed share their data order; any positive correlation that leaves
    between the fits is not used, which can only widen the interval."""
    d = a["opt_loss"] - b["opt_loss"]
    ci = None
    if a["draws"] is not None and b["draws"] is not None:
        ci = interval(a["draws"].loss - b["draws"].loss)
    lower = ci is not None and ci[1] < 0
    higher = ci is not None and ci[0] > 0
    reading = "lower" if lower else "higher" if higher else "level within the interval" if ci else "no interval"
    return {"delta_loss": d, "delta_loss_ci": ci, "reading": reading, "draws": "independent"}


def _fwd_at(means: pd.DataFrame, budget: float, variant: str, params: float) -> float:
    """Forward FLOPs per token at a fitted size: log-log interpolation over the grid's sizes."""
    sel = means[(means.budget == budget) & (means.variant == variant)].sort_values("params")
    return float(10 ** np.interp(math.log10(params), np.log10(sel.params),
                                 np.log10(sel.forward_flops_per_token)))


def _best(fits: pd.DataFrame) -> dict | None:
    ok = fits[fits.status == "ok"]
    return None if ok.empty else ok.loc[ok.opt_loss.idxmin()].to_dict()


def budget_verdict(an: Analysis, budget: float) -> dict:
    """Best learned MoD vs best vanilla at one budget, and random routing vs both."""
    f = an.fits[(an.fits.budget == budget) & (an.fits.metric == "topk")]
    kinds = an.means.drop_duplicates("variant").set_index("variant")
    router = lambda v: kinds.at[v, "router"] if v in kinds.index else None  # noqa: E731
    van = f[f.variant.map(lambda v: v in kinds.index and kinds.at[v, "kind"] == "vanilla")]
    mod = f[f.variant.map(lambda v: router(v) == "learned")]
    rnd = f[f.variant.map(lambda v: router(v) == "random")]
    best_v, best_m = _best(van), _best(mod)
    out: dict = {"status": "ok", "reason": None}
    if best_v is None or best_m is None:
        which = [w for w, b, g in (("vanilla", best_v, van), ("learned MoD", best_m, mod)) if b is None]
        out |= {"status": NO_VERDICT,
                "reason": f"no {' and no '.join(which)} variant has an interior optimum"}
    else:
        side = {}
        for name, b in (("mod", best_m), ("vanilla", best_v)):
            side[name] = {"variant": b["variant"], "params": b["opt_params"],
                          "params_ci": b["opt_params_ci"], "loss": b["opt_loss"],
                          "loss_ci": b["opt_loss_ci"],
                          "forward_flops_per_token": _fwd_at(an.means, budget, b["variant"], b["opt_params"])}
        out |= side | {"mod_vs_vanilla": _delta(best_m, best_v),
                       "params_ratio": best_m["opt_params"] / best_v["opt_params"],
                       "fwd_flops_ratio": side["mod"]["forward_flops_per_token"]
                       / side["vanilla"]["forward_flops_per_token"]}
    out["random"] = {r["variant"]: _random_json(r, best_m, best_v) for r in rnd.to_dict("records")}
    return out


def _random_json(r: dict, best_m: dict | None, best_v: dict | None) -> dict:
    if r["status"] != "ok":
        return {"status": NO_VERDICT, "reason": r["reason"]}
    return {"status": "ok", "reason": None, "params": r["opt_params"], "loss": r["opt_loss"],
            "vs_mod": _delta(r, best_m) if best_m else None,
            "vs_vanilla": _delta(r, best_v) if best_v else None}


def _power_law(C: np.ndarray, Y: np.ndarray) -> tuple[float, float]:
    """log10 Y = log10 A + alpha * log10 C: returns (A, alpha)."""
    alpha, log_a = np.polyfit(np.log10(C), np.log10(Y), 1)
    return float(10 ** log_a), float(alpha)


def frontier(an: Analysis) -> dict:
    """Per variant, N_opt(C) = A C^a and L_opt(C) = B C^b fitted to its interior optima."""
    out = {}
    fits = an.fits[an.fits.metric == "topk"]
    for v, f in fits.groupby("variant", sort=False):
        ok = f[f.status == "ok"].sort_values("budget")
        if len(ok) < 2:
            out[v] = {"status": NO_VERDICT, "n_budgets": len(ok),
                      "reason": f"interior optima at {len(ok)} budget(s); a frontier needs >= 2"}
            continue
        C = ok.budget.to_numpy(float)
        rec = {"status": "ok", "reason": None, "n_budgets": len(ok), "budgets": C.tolist(),
               "opt_params": ok.opt_params.tolist(), "opt_loss": ok.opt_loss.tolist()}
        for key, col in (("params", "opt_params"), ("loss", "opt_loss")):
            A, alpha = _power_law(C, ok[col].to_numpy(float))
            rec[key] = {"coef": A, "exponent": alpha, "exponent_ci": _exponent_ci(C, ok, key)}
        rec["note"] = ("exact through 2 points: no residuals, the interval comes from the "
                       "optima's own bootstrap draws only" if len(ok) == 2 else None)
        out[v] = rec
    return out


def _exponent_ci(C: np.ndarray, ok: pd.DataFrame, key: str) -> list[float] | None:
    """Refit the power law on the budgets' bootstrap draws, index by index."""
    draws = [d for d in ok.draws]
    if any(d is None for d in draws):
        return None
    Y = np.stack([getattr(d, key) for d in draws])  # (n_budgets, n_boot)
    keep = np.isfinite(Y).all(axis=0)
    if keep.sum() < Y.shape[1] / 2:
        return None
    slopes = np.polyfit(np.log10(C), np.log10(Y[:, keep]), 1)[0]
    return interval(slopes)


def verdict_dict(an: Analysis) -> dict:
    """Everything `modexp plot --json` prints: per budget the fits and verdict, the frontier."""
    budgets = []
    for budget in sorted(an.fits.budget.unique()):
        f = an.fits[an.fits.budget == budget]
        fits = {}
        # every planned run names its variant's kind, finished or not (a fit may have no sizes)
        kinds = an.results.runs.drop_duplicates("variant").set_index("variant")
        for v, g in f.groupby("variant", sort=False):
            by = g.set_index("metric")
            fits[v] = {"kind": kinds.at[v, "kind"], "router": _nan_to_none(kinds.at[v, "router"])}
            fits[v] |= _fit_json(by.loc["topk"])
            if "causal" in by.index:
                fits[v]["causal"] = _fit_json(by.loc["causal"])
        budgets.append({"budget": float(budget), "fits": fits, "verdict": budget_verdict(an, budget)})
    return {"experiment": an.results.experiment, "budgets": budgets, "frontier": frontier(an),
            "warnings": an.warnings}


def verdict_json(root: str | Path) -> dict:
    """Analyse a results folder and return its verdict as JSON-able data (the --json call)."""
    return verdict_dict(analyze(root))


# ---------------------------------------------------------------- text


def _ci(ci, fmt: str = "{:.4f}") -> str:
    return f" [{fmt.format(ci[0])}, {fmt.format(ci[1])}]" if ci else " (no interval)"


def _opt_text(s: dict) -> str:
    return (f"{s['variant']} {compact(s['params'])}{_ci(s['params_ci'], '{:.3g}')} params, "
            f"loss {s['loss']:.4f}{_ci(s['loss_ci'])}, {s['forward_flops_per_token']:.3g} fwd FLOPs/token")


def verdict_markdown(v: dict) -> str:
    """The verdict per budget and the frontier as Markdown lines (95% bootstrap intervals)."""
    lines = ["", "## isoFLOP verdict (95% bootstrap intervals in brackets)", ""]
    for b in v["budgets"]:
        tag, vd = budget_tag(b["budget"]), b["verdict"]
        for name, f in b["fits"].items():
            for label, g in ((name, f), (f"{name} (causal eval)", f.get("causal"))):
                if g is not None and g["status"] != "ok":
                    lines.append(f"- {tag} FLOPs, {label}: no verdict: {g['reason']}")
                elif g is not None and label != name:
                    lines.append(f"- {tag} FLOPs, {label}: optimum {compact(g['opt_params'])} params, "
                                 f"loss {g['opt_loss']:.4f}{_ci(g['opt_loss_ci'])}")
        if vd["status"] != "ok":
            lines.append(f"- **{tag} FLOPs: no verdict**: {vd['reason']}")
        else:
            d = vd["mod_vs_vanilla"]
            lines += [f"- **{tag} FLOPs**: best MoD {_opt_text(vd['mod'])}",
                      f"  vs best vanilla {_opt_text(vd['vanilla'])}",
                      f"  MoD - vanilla loss {d['delta_loss']:+.4f}{_ci(d['delta_loss_ci'], '{:+.4f}')}: "
                      f"MoD {d['reading']}; MoD/vanilla params {vd['params_ratio']:.2f}x, "
                      f"fwd FLOPs/token {vd['fwd_flops_ratio']:.2f}x"]
        for name, r in vd["random"].items():
            if r["status"] != "ok":
                lines.append(f"  random routing {name}: no verdict: {r['reason']}")
                continue
            for other in ("vs_mod", "vs_vanilla"):
                if r[other]:
                    lines.append(f"  random routing {name} {other.replace('_', ' ')}: "
                                 f"{r[other]['delta_loss']:+.4f}{_ci(r[other]['delta_loss_ci'], '{:+.4f}')} "
                                 f"({r[other]['reading']})")
    lines += ["", "## compute-optimal frontier (N_opt = A C^a, L_opt = B C^b)", ""]
    for name, f in v["frontier"].items():
        if f["status"] != "ok":
            lines.append(f"- {name}: no verdict: {f['reason']}")
            continue
        n, l_ = f["params"], f["loss"]
        lines.append(f"- {name} ({f['n_budgets']} budgets): a = {n['exponent']:.3f}"
                     f"{_ci(n['exponent_ci'], '{:.3f}')}, b = {l_['exponent']:.4f}"
                     f"{_ci(l_['exponent_ci'], '{:.4f}')}" + (f"; {f['note']}" if f["note"] else ""))
    return "\n".join(lines) + "\n"
