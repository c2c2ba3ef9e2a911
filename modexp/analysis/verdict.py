"""The isoFLOP verdict, per budget: the baseline (vanilla) against each treatment (learned
MoD) and each control (random-routing MoD), every side at its compute optimum over shape
families (envelope.py), scored on what sampling gets (roles.verdict_metric: a MoD's causal
eval loss; top-k reported beside it); the compute-equivalent gain (gain.py), the frontier
over budgets (frontier.py) and equal-size differences for the figure (equal_size.py). No torch.

Every comparison is between optima that have a verdict; its interval comes from the two
sides' independent bootstrap draws (bootstrap.fit_rng), or from joint draws where the runs
really are the same ones (a MoD's causal and top-k losses: bootstrap.bootstrap_paired);
every delta says which ("draws": "paired" | "independent"). A reading (lower / higher /
level) needs an interval and >= 90% interior refits on both sides; anything resting on a
missing optimum says "no verdict" and why.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from modexp.analysis.bootstrap import LEVEL, N_BOOT, basic_interval, bootstrap_paired, fit_rng
from modexp.analysis.diagnostics import ALPHA
from modexp.analysis.envelope import NO_VERDICT, envelope, min_draws, params_span
from modexp.analysis.equal_size import equal_size
from modexp.analysis.frontier import frontier
from modexp.analysis.gain import gain_at
from modexp.analysis.isoflop import MIN_INTERIOR, Analysis, analyze
from modexp.analysis.roles import BASELINE, CONTROL, TREATMENT, roles, scores

__all__ = ["NO_VERDICT", "budget_verdict", "frontier", "verdict_dict", "verdict_json"]


def _nan_to_none(v):
    return None if v is None or (isinstance(v, float) and not math.isfinite(v)) else v


def _fit_json(f) -> dict:
    """One fit or envelope as the JSON keys the issue fixes (numbers only with a verdict)."""
    return {"status": f["status"], "reason": f["reason"], "n_sizes": int(f["n_sizes"]),
            "opt_params": _nan_to_none(f["opt_params"]), "opt_params_ci": f["opt_params_ci"],
            "opt_loss": _nan_to_none(f["opt_loss"]), "opt_loss_ci": f["opt_loss_ci"],
            "bootstrap": f["boot_method"], "bootstrap_interior": _nan_to_none(f["boot_interior"])}


def _envelope_json(env) -> dict:
    """A variant's optimum at one budget: the envelope's numbers, then each family's fit."""
    fams = {name: _fit_json(r) | {"params_range": [_nan_to_none(r["params_min"]),
                                                   _nan_to_none(r["params_max"])],
                                  "diagnostics": r["diagnostics"]}
            for name, r in env["families"].items()}
    return _fit_json(env) | {"best_family": env["best_family"], "contenders": env["contenders"],
                             "left_out": list(env["left_out"].values()), "families": fams}


# ---------------------------------------------------------------- comparisons


def _reading(d: float, ci, sides: list[tuple[str, dict]], draws: str) -> dict:
    """A delta with its reading; no reading unless both sides' refits are >= 90% interior."""
    short = [f"only {100 * s['boot_interior']:.0f}% of {name}'s refits have an interior optimum"
             for name, s in sides if math.isfinite(s.get("boot_interior", math.nan))
             and s["boot_interior"] < MIN_INTERIOR]
    reason = None
    if short:
        reading, reason = NO_VERDICT, "; ".join(short) + f" (a reading needs >= {100 * MIN_INTERIOR:.0f}%)"
    elif ci is None:
        reading = "no interval"
    else:
        reading = "lower" if ci[1] < 0 else "higher" if ci[0] > 0 else "level within the interval"
    return {"delta_loss": d, "delta_loss_ci": ci, "reading": reading, "reason": reason, "draws": draws}


def _name(s: dict) -> str:
    return s.get("variant") or s.get("name") or "?"


def _delta(a, b) -> dict:
    """Loss of optimum a minus optimum b, with a 95% interval from their bootstrap draws.

    The two rest on different runs and draw from independent generators (bootstrap.fit_rng),
    so draw i of one minus draw i of the other is a draw of the difference of two independent
    estimates; the interval is the basic bootstrap one about the point difference. Runs of one
    seed share their data order; any positive correlation that leaves between the fits is
    not used, which can only widen the interval."""
    d = a["opt_loss"] - b["opt_loss"]
    ci = None
    if a["draws"] is not None and b["draws"] is not None:
        ci = basic_interval(d, a["draws"].loss - b["draws"].loss)
    return _reading(d, ci, [(_name(a), a), (_name(b), b)], "independent")


def _paired_gap(an: Analysis, budget: float, variant: str, causal: dict, topk: dict) -> dict | None:
    """A MoD variant's causal minus top-k optimal loss: the same runs scored two ways, so
    their draws are joint (bootstrap_paired) where every family in the running allows it."""
    if causal["status"] != "ok" or topk["status"] != "ok":
        return None
    sel = an.means[(an.means.budget == budget) & (an.means.variant == variant)]
    joint = {}
    for fam in dict.fromkeys(causal["contenders"] + topk["contenders"]):
        rows = sel[sel.family == fam].sort_values("params")
        pairs = [np.array([(t, c) for t, c in zip(r.losses, r.losses_causal)
                           if np.isfinite(t) and np.isfinite(c)]) for r in rows.itertuples()]
        keep = [len(p) > 0 for p in pairs]
        got = bootstrap_paired(rows.params[keep], [p for p, k in zip(pairs, keep) if k],
                               fit_rng(float(budget), variant, "causal-topk", fam), N_BOOT)
        if got is None:
            joint = None
            break
        joint[fam] = got
    if joint is None:
        dt, dc, how = topk["draws"], causal["draws"], "independent"
    else:
        dt = min_draws([joint[f][0] for f in topk["contenders"]])
        dc = min_draws([joint[f][1] for f in causal["contenders"]])
        how = "paired"
    d = causal["opt_loss"] - topk["opt_loss"]
    ci = None if dt is None or dc is None else basic_interval(d, dc.loss - dt.loss)
    return _reading(d, ci, [(f"{variant} (causal)", causal), (f"{variant} (top-k)", topk)], how)


# ---------------------------------------------------------------- sides per budget


def _row(an: Analysis, budget: float, variant: str, metric: str) -> dict | None:
    e = an.envelopes
    got = e[(e.budget == budget) & (e.variant == variant) & (e.metric == metric)]
    return None if got.empty else dict(got.iloc[0], name=variant, variant=variant,
                                       family=got.iloc[0]["best_family"])


def _no_causal(variant: str) -> dict:
    return {"name": variant, "variant": variant, "family": None, "status": NO_VERDICT,
            "reason": f"{variant} has no causal eval loss (causal: none): top-k routing sees "
                      "later tokens, so its loss is not what sampling gets and cannot decide",
            "opt_loss": math.nan, "opt_params": math.nan, "opt_loss_ci": None,
            "opt_params_ci": None, "boot_method": None, "boot_interior": math.nan, "draws": None,
            "n_sizes": 0, "floor": -math.inf, "contenders": [], "left_out": {}, "no_causal": True}


def _best_of(members: list[dict]) -> dict | None:
    """The optimum over several variants of one role (the per-draw minimum, as over families)."""
    if not members:
        return None
    env = envelope(members, label="variant")
    best = next((m for m in members if m["name"] == env["best"]), None)
    return env | {"name": env["best"], "variant": env["best"],
                  "family": best["family"] if best else None}


def _sides(an: Analysis, budget: float, R: dict[str, str]) -> dict:
    """Every role's optimum at one budget, on its verdict metric (and top-k beside)."""
    S = scores(an.results.runs)  # each variant's metric, as its registry entry says
    present = [v for v in R if _row(an, budget, v, "topk") is not None]
    score = {v: _row(an, budget, v, S[v]) or (_no_causal(v) if S[v] == "causal" else None)
             for v in present}
    topk = {v: _row(an, budget, v, "topk") for v in present}
    of = lambda role: [v for v in present if R[v] == role]  # noqa: E731
    scored = [score[v] for v in of(TREATMENT) if not score[v].get("no_causal")]
    return {"score": score, "topk": topk, "metrics": S, "treatments": of(TREATMENT), "controls": of(CONTROL),
            "base": _best_of([score[v] for v in of(BASELINE)]), "mod": _best_of(scored),
            "mod_topk": _best_of([topk[v] for v in of(TREATMENT)])}


def _gains(sides: dict[float, dict]) -> dict[str, dict[float, dict]]:
    """name ("mod", each treatment, each control) -> budget -> compute-equivalent gain."""
    frontier_ = [(c, s["base"]) for c, s in sides.items() if s["base"] is not None]
    base = next((e["variant"] for _, e in frontier_ if e["status"] == "ok"), "vanilla")
    out: dict[str, dict[float, dict]] = {}
    for c, s in sides.items():
        for name, side in [("mod", s["mod"])] + [(v, s["score"][v]) for v in s["treatments"] + s["controls"]]:
            if side is not None:
                out.setdefault(name, {})[c] = gain_at(c, side, frontier_, "MoD" if name == "mod" else name, base)
    return out


def _fwd_at(means: pd.DataFrame, budget: float, variant: str, family, params: float) -> float:
    """Forward FLOPs per token at a fitted size: log-log interpolation over the family's sizes."""
    sel = means[(means.budget == budget) & (means.variant == variant)]
    if family is not None and (sel.family == family).any():
        sel = sel[sel.family == family]
    sel = sel.sort_values("params")
    return float(10 ** np.interp(math.log10(params), np.log10(sel.params),
                                 np.log10(sel.forward_flops_per_token)))


def _side_json(an: Analysis, budget: float, s: dict, metric: str) -> dict:
    return {"variant": s["variant"], "family": s["family"], "metric": metric,
            "params": s["opt_params"], "params_ci": s["opt_params_ci"], "loss": s["opt_loss"],
            "loss_ci": s["opt_loss_ci"], "interior": _nan_to_none(s["boot_interior"]),
            "forward_flops_per_token": _fwd_at(an.means, budget, s["variant"], s["family"],
                                               s["opt_params"])}


def _vs(a: dict | None, b: dict | None) -> dict | None:
    ok = a is not None and b is not None and a["status"] == "ok" and b["status"] == "ok"
    return _delta(a, b) if ok else None


def budget_verdict(an: Analysis, budget: float, sides: dict | None = None,
                   gains: dict | None = None) -> dict:
    """The baseline against each treatment and control at one budget, and the legacy keys:
    best learned MoD vs best vanilla (`mod_vs_vanilla`) and the random controls (`random`)."""
    R = roles(an.results.runs)
    s = sides if sides is not None else _sides(an, budget, R)
    gains = gains if gains is not None else _gains({budget: s})
    base, mod = s["base"], s["mod"]
    gain = lambda name: gains.get(name, {}).get(budget)  # noqa: E731
    metric = s["metrics"].get(mod["variant"], "causal") if mod is not None else "causal"
    out: dict = {"status": "ok", "reason": None, "metric": metric, "details": []}
    if base is None or mod is None or base["status"] != "ok" or mod["status"] != "ok":
        out |= {"status": NO_VERDICT, "reason": _why(base, mod, s["treatments"]),
                "details": [f"{w}: {e['reason']}" for w, e in (("vanilla", base), ("learned MoD", mod))
                            if e is not None and e["status"] != "ok"]
                + [f"{v}: {s['score'][v]['reason']}" for v in s["treatments"]
                   if s["score"][v].get("no_causal")]}
    else:
        side = {"mod": _side_json(an, budget, mod, metric),
                "vanilla": _side_json(an, budget, base, s["metrics"].get(base["variant"], "topk"))}
        out |= side | {"mod_vs_vanilla": _delta(mod, base),
                       "mod_vs_vanilla_topk": _vs(s["mod_topk"], base),
                       "params_ratio": mod["opt_params"] / base["opt_params"],
                       "fwd_flops_ratio": side["mod"]["forward_flops_per_token"]
                       / side["vanilla"]["forward_flops_per_token"], "gain": gain("mod")}
    out["treatments"] = {v: _role_json(an, budget, s, v, base, gain(v)) for v in s["treatments"]}
    out["controls"] = {v: _role_json(an, budget, s, v, base, gain(v)) | {
        "vs_treatments": {t: _vs(s["score"][v], s["score"][t]) for t in s["treatments"]},
        "vs_treatments_same_families": {t: _vs_same_families(s["score"][v], s["score"][t])
                                        for t in s["treatments"]}}
        for v in s["controls"]}
    out["random"] = {v: _random_json(s["score"][v], mod, base) for v in s["controls"]}
    return out


def _vs_same_families(control: dict, treatment: dict) -> dict | None:
    """A control trained on some of a treatment's families only (budgets[].variant_families,
    e.g. the paper's control in the deepest family) against the treatment's envelope over
    those same families: like for like, where the treatment's overall optimum may sit in a
    family the control never ran in. None when the control spans the treatment's families
    (then `vs_treatments` is this comparison) or either side has no family fits."""
    fams, t_fams = control.get("families"), treatment.get("families")
    if not isinstance(fams, dict) or not isinstance(t_fams, dict) or not set(fams) < set(t_fams):
        return None
    members = [t_fams[f] for f in fams]
    restricted = envelope(members, params_span(members)) | {"name": treatment["variant"],
                                            "variant": treatment["variant"]}
    got = _vs(control, restricted)
    return None if got is None else got | {"families": sorted(fams)}


def _why(base: dict | None, mod: dict | None, treatments: list[str]) -> str:
    """Why a budget has no MoD-vs-vanilla verdict, in one clause per side."""
    parts = []
    if base is None:
        parts.append("no vanilla variant is planned at this budget")
    elif base["status"] != "ok":
        parts.append("no vanilla variant has an interior optimum")
    if mod is None:
        parts.append("no learned MoD variant has a causal eval loss" if treatments
                     else "no learned MoD variant is planned at this budget")
    elif mod["status"] != "ok":
        parts.append("no learned MoD variant has an interior optimum")
    if len(parts) == 2 and all(p.endswith("has an interior optimum") for p in parts):
        return "no vanilla and no learned MoD variant has an interior optimum"
    return "; ".join(parts)


def _role_json(an: Analysis, budget: float, s: dict, v: str, base: dict | None, gain) -> dict:
    e = s["score"][v]
    metric = None if e.get("no_causal") else s["metrics"][v]
    rec = {"status": e["status"], "reason": e["reason"], "metric": metric}
    if e["status"] == "ok":
        rec |= _side_json(an, budget, e, metric)
    return rec | {"vs_baseline": _vs(e, base), "vs_baseline_topk": _vs(s["topk"][v], base),
                  "causal_minus_topk": _paired_gap(an, budget, v, e, s["topk"][v])
                  if metric == "causal" else None,
                  "gain": gain}


def _random_json(r: dict, best_m: dict | None, best_v: dict | None) -> dict:
    if r["status"] != "ok":
        return {"status": NO_VERDICT, "reason": r["reason"]}
    return {"status": "ok", "reason": None, "params": r["opt_params"], "loss": r["opt_loss"],
            "vs_mod": _vs(r, best_m), "vs_vanilla": _vs(r, best_v)}


# ---------------------------------------------------------------- the whole folder


def _fits_json(an: Analysis, budget: float, R: dict[str, str]) -> dict:
    e = an.envelopes[an.envelopes.budget == budget]
    kinds = an.results.runs.drop_duplicates("variant").set_index("variant")
    S = scores(an.results.runs)
    fits = {}
    for v, g in e.groupby("variant", sort=False):
        by = g.set_index("metric")
        kind = kinds.at[v, "kind"]
        fits[v] = {"kind": kind, "router": _nan_to_none(kinds.at[v, "router"]), "role": R[v],
                   "verdict_metric": S[v] if S[v] != "causal" or "causal" in by.index else None}
        fits[v] |= _envelope_json(by.loc["topk"])
        if "causal" in by.index:
            fits[v]["causal"] = _envelope_json(by.loc["causal"])
    return fits


def verdict_dict(an: Analysis) -> dict:
    """Everything `modexp plot --json` prints: per budget the fits, verdict and equal-size
    differences; the frontier; the method's settings; the warnings."""
    R = roles(an.results.runs)
    budgets = sorted(an.envelopes.budget.unique())
    sides = {float(c): _sides(an, c, R) for c in budgets}
    gains = _gains(sides)
    out = [{"budget": float(c), "fits": _fits_json(an, c, R),
            "verdict": budget_verdict(an, c, sides[float(c)], gains),
            "equal_size": equal_size(an.means, c, R)} for c in budgets]
    return {"experiment": an.results.experiment, "budgets": out, "frontier": frontier(an.envelopes),
            "method": {"level": LEVEL, "n_boot": N_BOOT, "lack_of_fit_alpha": ALPHA,
                       "min_interior": MIN_INTERIOR},
            "warnings": an.warnings}


def verdict_json(root: str | Path) -> dict:
    """Analyse a results folder and return its verdict as JSON-able data (the --json call)."""
    return verdict_dict(analyze(root))
