"""isoFLOP analysis of a loaded results folder: seed means, parabola fits, the summary table.

Hoffmann et al. 2022, approach 2: at a fixed training budget, final loss against log10(params)
is fitted by a parabola whose minimum is the compute-optimal size. Fewer than 4 sizes, a
downward parabola or a minimum at the grid's edge give "no verdict" with the reason, never a
number from an extrapolation. No torch, no matplotlib.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from modexp.analysis.bootstrap import N_BOOT, bootstrap_optimum, fit_rng, interval
from modexp.analysis.results import Results, load_results
from modexp.naming import budget_tag

FIT_COLUMNS = ["budget", "variant", "metric", "n_sizes", "status", "reason", "opt_params",
               "opt_params_ci", "opt_loss", "opt_loss_ci", "boot_method", "boot_interior",
               "flag", "coeffs", "params_min", "params_max", "draws"]
MIN_SIZES = 4  # a parabola has 3 coefficients: 3 sizes leave no residual and no interval
METRICS = {"topk": ("loss", "losses"), "causal": ("loss_causal", "losses_causal")}


@dataclass
class Analysis:
    """A loaded folder plus everything derived from it (what the figures and table show)."""

    results: Results
    means: pd.DataFrame
    fits: pd.DataFrame
    table: pd.DataFrame
    warnings: list[str]


def analyze(root: str | Path) -> Analysis:
    """Load a results folder, average seeds, fit isoFLOP parabolas, build the summary table."""
    res = load_results(root)
    means = seed_means(res.runs)
    fits = fit_isoflop(means, variant_order(res.runs)[0], res.runs)
    return Analysis(res, means, fits, summary_table(res.runs, means, fits),
                    res.warnings + fit_warnings(fits))


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


def fit_parabola(params, losses) -> Fit:
    """Fit loss against log10(params); no verdict for < 4 sizes, a downward parabola, or a
    minimum (fitted, or the lowest measured loss) at or beyond the grid's edge."""
    x, y = np.log10(np.asarray(params, float)), np.asarray(losses, float)
    n = len(np.unique(x))
    coeffs = tuple(np.polyfit(x, y, 2)) if n >= 3 else None
    nan = math.nan
    if n < MIN_SIZES:
        return Fit(coeffs, nan, nan, n, f"fewer than {MIN_SIZES} sizes ({n})")
    a, b, c = coeffs
    if a <= 0:
        return Fit(coeffs, nan, nan, n, "parabola opens downward (no minimum)")
    xo, lo, hi = -b / (2 * a), x.min(), x.max()
    if xo <= lo or np.argmin(y) == np.argmin(x):
        return Fit(coeffs, nan, nan, n, "minimum at or below the smallest size (extend the grid down)")
    if xo >= hi or np.argmin(y) == np.argmax(x):
        return Fit(coeffs, nan, nan, n, "minimum at or above the largest size (extend the grid up)")
    return Fit(coeffs, float(10 ** xo), float(c - b * b / (4 * a)), n, None)


def seed_group(runs: pd.DataFrame) -> list[str]:
    """The columns that make runs one point but for their seed (the run id minus the seed).

    The one place that decides which runs may be averaged: runs differing in anything but
    the seed must never be. A run fingerprint column, when runs carry one, joins the key."""
    return ["budget", "model", "variant"] + [c for c in ("fingerprint",) if c in runs]


def seed_means(runs: pd.DataFrame) -> pd.DataFrame:
    """Complete runs averaged over seeds: one row per seed group, with n, standard errors
    (NaN for one seed) and the per-seed losses the bootstrap resamples."""
    done = runs[runs["complete"]]
    cols = ["budget", "model", "variant", "kind", "router", "params", "forward_flops_per_token",
            "loss", "loss_se", "loss_causal", "loss_causal_se", "n", "losses", "losses_causal"]
    if done.empty:
        return pd.DataFrame(columns=cols)
    se = lambda v: v.std() / math.sqrt(len(v)) if len(v) > 1 else math.nan  # noqa: E731
    g = done.groupby(seed_group(done), sort=False)
    out = g.agg(kind=("kind", "first"), router=("router", "first"), params=("params", "mean"),
                forward_flops_per_token=("forward_flops_per_token", "mean"),
                loss=("final_eval_loss", "mean"), loss_se=("final_eval_loss", se),
                loss_causal=("final_eval_loss_causal", "mean"),
                loss_causal_se=("final_eval_loss_causal", se), n=("final_eval_loss", "size"),
                losses=("final_eval_loss", list), losses_causal=("final_eval_loss_causal", list))
    return out.reset_index()[cols]


def fit_isoflop(means: pd.DataFrame, variants: list[str], planned: pd.DataFrame | None = None,
                n_boot: int = N_BOOT) -> pd.DataFrame:
    """One parabola per budget, variant and metric (topk; causal for MoD), with bootstrap
    95% intervals of its optimum. `planned` (every planned run): a variant is fitted only at
    the budgets it is planned at (a control run at one budget is not "no verdict" at others)."""
    recs = []
    for budget in sorted(means["budget"].unique()):
        for v in variants:
            if planned is not None and not ((planned["budget"] == budget) & (planned["variant"] == v)).any():
                continue
            sel = means[(means["budget"] == budget) & (means["variant"] == v)].sort_values("params")
            for metric, (col, seeds) in METRICS.items():
                if metric == "causal" and (sel.empty or sel["kind"].iloc[0] != "mod"
                                           or not sel[col].notna().all()):
                    continue
                recs.append(_fit_record(budget, v, metric, sel, col, seeds, n_boot))
    return pd.DataFrame.from_records(recs, columns=FIT_COLUMNS)


def _fit_record(budget, variant, metric, sel, col, seeds, n_boot: int = N_BOOT) -> dict:
    f = fit_parabola(sel["params"], sel[col])
    rec = {"budget": budget, "variant": variant, "metric": metric, "n_sizes": f.n_sizes,
           "status": f.status, "reason": f.reason, "opt_params": f.opt_params,
           "opt_params_ci": None, "opt_loss": f.opt_loss, "opt_loss_ci": None,
           "boot_method": None, "boot_interior": math.nan, "flag": f.reason or "",
           "coeffs": f.coeffs, "params_min": sel["params"].min(),
           "params_max": sel["params"].max(), "draws": None}
    if f.status == "ok":
        d = bootstrap_optimum(sel["params"], [np.asarray(v, float) for v in sel[seeds]],
                              fit_rng(float(budget), variant, metric), n_boot)
        if d is not None:
            rec |= {"opt_params_ci": interval(d.params), "opt_loss_ci": interval(d.loss),
                    "boot_method": d.method, "boot_interior": d.interior, "draws": d}
    return rec


def fit_warnings(fits: pd.DataFrame) -> list[str]:
    """One line per fit without a verdict, and per optimum whose refits often leave the grid."""
    out = []
    for f in fits.itertuples():
        what = f"budget {budget_tag(f.budget)} FLOPs, {f.variant}" + (
            " (causal eval)" if f.metric == "causal" else "")
        if f.status != "ok":
            out.append(f"{what}: no verdict: {f.reason} (grid {compact(f.params_min)}.."
                       f"{compact(f.params_max)})")
        elif f.boot_interior < 0.9:
            out.append(f"{what}: only {100 * f.boot_interior:.0f}% of bootstrap refits have "
                       "their minimum inside the grid; its interval is conditional on that")
    return out


def variant_order(runs: pd.DataFrame) -> tuple[list[str], list[str], list[str]]:
    """(all variants in plan order, the vanilla ones, the MoD ones)."""
    order = list(dict.fromkeys(runs["variant"]))
    kinds = dict(zip(runs["variant"], runs["kind"]))
    return order, [v for v in order if kinds[v] == "vanilla"], [v for v in order if kinds[v] == "mod"]


def summary_table(runs: pd.DataFrame, means: pd.DataFrame, fits: pd.DataFrame) -> pd.DataFrame:
    """Per budget and size: loss per variant (seed mean, n), MoD vs vanilla %, forward-FLOPs
    ratio; then one 'isoFLOP optimum' row per budget with each variant's fitted size and loss."""
    order, vanillas, mods = variant_order(runs)
    sizes = runs.groupby("model", sort=False)["params"].min().sort_values()
    planned = runs[["budget", "model"]].drop_duplicates()
    rows = []
    for budget in sorted(planned["budget"].unique()):
        models = [m for m in sizes.index if ((planned.budget == budget) & (planned.model == m)).any()]
        for m in models:
            rows.append(_size_row(runs, means, budget, m, order, vanillas, mods))
        rows.append(_optimum_row(fits, budget, order, vanillas, mods))
    return pd.DataFrame.from_records(rows)


def _size_row(runs, means, budget, model, order, vanillas, mods) -> dict:
    planned = runs[(runs.budget == budget) & (runs.model == model)]
    got = means[(means.budget == budget) & (means.model == model)].set_index("variant")
    cells = {v: (float(planned.loc[planned.variant == v, "params"].min()),
                 got.at[v, "loss"] if v in got.index else math.nan,
                 int(got.at[v, "n"]) if v in got.index else 0,
                 got.at[v, "loss_causal"] if v in got.index else math.nan) for v in order}
    fwd = planned.groupby("variant")["forward_flops_per_token"].first()
    note = "; ".join(f"{r.variant} s{r.seed}: {_state_text(r)}"
                     for r in planned.itertuples() if not r.complete)
    return _row(budget, model, cells, fwd, vanillas, mods, note)


def _optimum_row(fits, budget, order, vanillas, mods) -> dict:
    f = fits[(fits.budget == budget) & (fits.metric == "topk")].set_index("variant")
    cells = {v: (f.at[v, "opt_params"], f.at[v, "opt_loss"], int(f.at[v, "n_sizes"]), math.nan)
             if v in f.index else (math.nan, math.nan, 0, math.nan) for v in order}
    note = "; ".join(f"{v}: {f.at[v, 'flag']}" for v in order if v in f.index and f.at[v, "flag"])
    return _row(budget, "isoFLOP optimum", cells, {}, vanillas, mods, note)


def _row(budget, model, cells: dict, fwd, vanillas, mods, note: str) -> dict:
    """cells: variant -> (params, loss, n, causal loss). n counts seeds, or sizes in a fit."""
    row = {"budget": budget, "model": model}
    for v, (params, loss, n, causal) in cells.items():
        row |= {f"{v} params": params, f"{v} loss": loss, f"{v} n": n}
        if v in mods:
            row[f"{v} causal loss"] = causal
    for m in mods:
        for b in vanillas:
            row[f"{m} vs {b} %"] = _pct(row[f"{m} loss"], row[f"{b} loss"])
            row[f"{m}/{b} fwd FLOPs"] = fwd[m] / fwd[b] if m in fwd and b in fwd else math.nan
    return row | {"note": note}


def _state_text(r) -> str:
    if r.state == "partial":
        return f"partial ({100 * r.budget_frac_done:.0f}%)"
    return "diverged" if r.state == "done" else r.state


def _pct(loss: float, base: float) -> float:
    """Relative loss difference in percent; negative means lower (better) than the base."""
    return 100 * (loss - base) / base if math.isfinite(loss) and math.isfinite(base) else math.nan


# ---------------------------------------------------------------- text formatting


def fmt_cell(col: str, v) -> str:
    """A table value as text: compact params, 4-decimal losses, signed percentages."""
    if isinstance(v, str):
        return v
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    if col == "budget":
        return budget_tag(v)
    if col.endswith(" params"):
        return compact(v)
    if col.endswith(" %"):
        return f"{v:+.2f}%"
    if col.endswith(" fwd FLOPs"):
        return f"{v:.3f}x"
    if col.endswith(" n"):
        return str(int(v))
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def compact(n: float) -> str:
    """1.23M-style count."""
    for div, suf in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.3g}{suf}"
    return f"{n:.3g}"


def to_markdown(table: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table (no tabulate dependency)."""
    cols = list(table.columns)
    lines = ["| " + " | ".join(cols) + " |",
             "|" + "|".join("---" if c in ("model", "note") else "---:" for c in cols) + "|"]
    for _, r in table.iterrows():
        lines.append("| " + " | ".join(fmt_cell(c, r[c]).replace("|", "\\|") for c in cols) + " |")
    return "\n".join(lines) + "\n"
