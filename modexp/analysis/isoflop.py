"""isoFLOP analysis of a loaded results folder: seed means, one parabola per shape family
(parabola.py) with its bootstrap interval (bootstrap.py) and diagnostics (diagnostics.py),
the envelope over families (envelope.py), the summary table (summary.py). No torch, no
matplotlib.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from modexp.analysis.bootstrap import N_BOOT, basic_interval, bootstrap_optimum, fit_rng, interval
from modexp.analysis.diagnostics import lack_of_fit, leave_one_out
from modexp.analysis.envelope import envelopes as fit_envelopes
from modexp.analysis.envelope import records_frame
from modexp.analysis.parabola import MIN_SIZES, Fit, fit_parabola  # noqa: F401 (re-exported)
from modexp.analysis.results import ONE_FAMILY, Results, load_results
from modexp.analysis.roles import variant_order  # noqa: F401 (re-exported)
from modexp.analysis.summary import summary_table
from modexp.analysis.text import compact  # noqa: F401 (re-exported)
from modexp.naming import budget_tag
from modexp.records import SUMMARY

FIT_COLUMNS = ["budget", "variant", "metric", "family", "n_sizes", "status", "reason",
               "opt_params", "opt_params_ci", "opt_loss", "opt_loss_ci", "boot_method",
               "boot_interior", "flag", "coeffs", "params_min", "params_max", "draws",
               "diagnostics", "points"]
METRICS = {"topk": ("loss", "losses"), "causal": ("loss_causal", "losses_causal")}
MIN_INTERIOR = 0.9  # below this share of interior refits, an optimum supports no reading


@dataclass
class Analysis:
    """A loaded folder plus everything derived from it (what the figures and table show)."""

    results: Results
    means: pd.DataFrame
    fits: pd.DataFrame  # one row per (budget, variant, metric, family)
    envelopes: pd.DataFrame  # one row per (budget, variant, metric): the optimum over families
    table: pd.DataFrame
    warnings: list[str]


def analyze(root: str | Path) -> Analysis:
    """Load a results folder, average seeds, fit isoFLOP parabolas per family, take their
    envelopes, build the summary table."""
    res = load_results(root)
    means = seed_means(res.runs)
    fits = fit_isoflop(means, variant_order(res.runs)[0], res.runs)
    envs = fit_envelopes(fits)
    return Analysis(res, means, fits, envs, summary_table(res.runs, means, envs),
                    res.warnings + fit_warnings(envs))


def seed_group(runs: pd.DataFrame) -> list[str]:
    """The columns that make runs one point but for their seed (the run id minus the seed).

    The one place that decides which runs may be averaged: runs differing in anything but
    the seed must never be. A run fingerprint column, when runs carry one, joins the key."""
    return ["budget", "model", "variant"] + [c for c in ("fingerprint",) if c in runs]


def seed_means(runs: pd.DataFrame) -> pd.DataFrame:
    """Complete runs averaged over seeds: one row per seed group, with n, standard errors
    (NaN for one seed) and the per-seed losses the bootstrap resamples."""
    done = runs[runs["complete"]]
    cols = ["budget", "model", "variant", "kind", "router", "entry", "family", "n_layers", "params",
            "forward_flops_per_token", "loss", "loss_se", "loss_causal", "loss_causal_se", "n",
            "losses", "losses_causal"]
    if done.empty:
        return pd.DataFrame(columns=cols)
    se = lambda v: v.std() / math.sqrt(v.count()) if v.count() > 1 else math.nan  # noqa: E731
    g = done.groupby(seed_group(done), sort=False)
    out = g.agg(kind=("kind", "first"), router=("router", "first"), entry=("entry", "first"),
                family=("family", "first"),
                n_layers=("n_layers", "first"), params=("params", "mean"),
                forward_flops_per_token=("forward_flops_per_token", "mean"),
                loss=(SUMMARY.final_eval_loss, "mean"), loss_se=(SUMMARY.final_eval_loss, se),
                loss_causal=(SUMMARY.final_eval_loss_causal, "mean"),
                loss_causal_se=(SUMMARY.final_eval_loss_causal, se), n=(SUMMARY.final_eval_loss, "size"),
                losses=(SUMMARY.final_eval_loss, list), losses_causal=(SUMMARY.final_eval_loss_causal, list))
    return out.reset_index()[cols]


def family_order(frame: pd.DataFrame) -> list[str]:
    """Families by depth (then name): L1, L2, L4, ... and named shape rules after."""
    if "family" not in frame or frame.empty:
        return []
    depth = frame.groupby("family")["n_layers"].min() if "n_layers" in frame else None
    key = lambda f: (depth[f] if depth is not None and pd.notna(depth[f]) else math.inf, f)  # noqa: E731
    return sorted(frame["family"].dropna().unique(), key=key)


def fit_isoflop(means: pd.DataFrame, variants: list[str], planned: pd.DataFrame | None = None,
                n_boot: int = N_BOOT) -> pd.DataFrame:
    """One parabola per budget, variant, metric (topk; causal for MoD) and family, with
    bootstrap 95% intervals of its optimum and its diagnostic. `planned` (every planned run):
    a variant is fitted only at the budgets it is planned at (a control run at one budget is
    not "no verdict" at others), in every family it is planned in (one with no finished run
    yet is "no verdict", not absent). Seed means without a family column are one family."""
    if "family" not in means:
        means = means.assign(family=ONE_FAMILY, n_layers=None)
    recs = []
    for budget in sorted(means["budget"].unique()):
        for v in variants:
            plan = None if planned is None else planned[(planned["budget"] == budget)
                                                        & (planned["variant"] == v)]
            if plan is not None and plan.empty:
                continue
            sel_v = means[(means["budget"] == budget) & (means["variant"] == v)]
            fams = family_order(plan if plan is not None else sel_v)
            for metric, (col, seeds) in METRICS.items():
                if metric == "causal" and (sel_v.empty or col not in sel_v
                                           or not sel_v[col].notna().any()):
                    continue
                for fam in fams:
                    sel = sel_v[(sel_v["family"] == fam) & sel_v[col].notna()].sort_values("params")
                    recs.append(_fit_record(budget, v, metric, fam, sel, col, seeds, n_boot))
    return records_frame(recs, FIT_COLUMNS)


def _fit_record(budget, variant, metric, family, sel, col, seeds, n_boot: int = N_BOOT) -> dict:
    f = fit_parabola(sel["params"], sel[col])
    seed_losses = [np.asarray([x for x in v if np.isfinite(x)], float) for v in sel[seeds]]
    se = sel[f"{col}_se"].to_numpy(float) if f"{col}_se" in sel else np.full(len(sel), np.nan)
    rec = {"budget": budget, "variant": variant, "metric": metric, "family": family,
           "n_sizes": f.n_sizes, "status": f.status, "reason": f.reason,
           "opt_params": f.opt_params, "opt_params_ci": None, "opt_loss": f.opt_loss,
           "opt_loss_ci": None, "boot_method": None, "boot_interior": math.nan,
           "flag": f.reason or "", "coeffs": f.coeffs, "params_min": sel["params"].min(),
           "params_max": sel["params"].max(), "draws": None, "diagnostics": None,
           "points": (np.log10(sel["params"].to_numpy(float)), sel[col].to_numpy(float), se)}
    if f.status != "ok":
        return rec
    d = bootstrap_optimum(sel["params"], seed_losses, fit_rng(float(budget), variant, metric, family),
                          n_boot)
    if d is not None:
        rec |= {"opt_params_ci": interval(d.params), "opt_loss_ci": basic_interval(f.opt_loss, d.loss),
                "boot_method": d.method, "boot_interior": d.interior, "draws": d}
    diag = (lack_of_fit(sel["params"], seed_losses) if all(len(v) >= 2 for v in seed_losses)
            else leave_one_out(sel["params"], sel[col], rec["opt_params_ci"]))
    rec["diagnostics"] = diag.to_json()
    if not diag.passed:  # a parabola that does not fit has no optimum to report
        rec |= {"status": "no verdict", "reason": diag.reason, "flag": diag.reason,
                "opt_params": math.nan, "opt_loss": math.nan, "opt_params_ci": None,
                "opt_loss_ci": None, "draws": None}
    return rec


def fit_warnings(envs: pd.DataFrame) -> list[str]:
    """One line per optimum (a variant's envelope over families) without a verdict, and per
    optimum whose refits leave the grid too often to support a reading."""
    out = []
    for e in envs.itertuples():
        what = f"budget {budget_tag(e.budget)} FLOPs, {e.variant}" + (
            " (causal eval)" if e.metric == "causal" else "")
        if e.status != "ok":
            grid = (f" (grid {compact(e.params_min)}..{compact(e.params_max)})"
                    if np.isfinite(e.params_min) else "")
            out.append(f"{what}: no verdict: {e.reason}{grid}")
        elif e.boot_interior < MIN_INTERIOR:
            out.append(f"{what}: only {100 * e.boot_interior:.0f}% of bootstrap refits have "
                       f"their minimum inside the grid (a reading needs >= {100 * MIN_INTERIOR:.0f}%): "
                       "no lower / higher / level reading rests on it")
    return out
