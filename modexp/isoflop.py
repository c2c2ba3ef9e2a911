"""isoFLOP analysis of a loaded results folder: seed means, parabola fits, the summary table.

Hoffmann et al. 2022, approach 2: at a fixed training budget, final loss against log10(params)
is fitted by a parabola whose minimum is the compute-optimal size; a minimum at the grid's edge
(or fewer than 3 sizes) is flagged, since it is an extrapolation. No torch, no matplotlib.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from modexp.analysis import Results, load_results
from modexp.plan import budget_tag

FIT_COLUMNS = ["budget", "variant", "n_sizes", "opt_params", "opt_loss", "flag", "coeffs",
               "params_min", "params_max"]
MIN_SIZES = 3  # a parabola through fewer points is not a fit


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
    fits = fit_isoflop(means, variant_order(res.runs)[0])
    return Analysis(res, means, fits, summary_table(res.runs, means, fits),
                    res.warnings + fit_warnings(fits))


@dataclass
class Fit:
    """An isoFLOP parabola, loss = a*x^2 + b*x + c with x = log10(params) (Hoffmann Approach 2)."""

    coeffs: tuple[float, float, float] | None
    opt_params: float
    opt_loss: float
    n_sizes: int
    flag: str  # "" when the minimum is inside the grid


def fit_parabola(params, losses) -> Fit:
    """Fit loss against log10(params); flag too few sizes, a non-convex fit or an edge minimum."""
    x, y = np.log10(np.asarray(params, float)), np.asarray(losses, float)
    n = len(np.unique(x))
    if n < MIN_SIZES:
        return Fit(None, math.nan, math.nan, n, f"too few sizes ({n} < {MIN_SIZES}), no fit")
    a, b, c = np.polyfit(x, y, 2)
    if a <= 0:
        return Fit((a, b, c), math.nan, math.nan, n, "no minimum (parabola opens downward)")
    xo = -b / (2 * a)
    lo, hi = x.min(), x.max()
    tol = 1e-3 * (hi - lo)  # "at the edge" within rounding of the grid's end points
    flag = ("edge: minimum at/below the smallest size" if xo <= lo + tol else
            "edge: minimum at/above the largest size" if xo >= hi - tol else "")
    return Fit((a, b, c), float(10 ** xo), float(c - b * b / (4 * a)), n, flag)


def seed_means(runs: pd.DataFrame) -> pd.DataFrame:
    """Complete runs averaged over seeds: one row per budget, model and variant, with n."""
    done = runs[runs["complete"]]
    cols = ["budget", "model", "variant", "kind", "params", "forward_flops_per_token",
            "loss", "loss_std", "loss_causal", "n"]
    if done.empty:
        return pd.DataFrame(columns=cols)
    g = done.groupby(["budget", "model", "variant"], sort=False)
    out = g.agg(kind=("kind", "first"), params=("params", "mean"),
                forward_flops_per_token=("forward_flops_per_token", "mean"),
                loss=("final_eval_loss", "mean"), loss_std=("final_eval_loss", "std"),
                loss_causal=("final_eval_loss_causal", "mean"), n=("final_eval_loss", "size"))
    return out.reset_index()[cols]


def fit_isoflop(means: pd.DataFrame, variants: list[str]) -> pd.DataFrame:
    """One parabola per budget and variant over the seed-averaged sizes."""
    recs = []
    for budget in sorted(means["budget"].unique()):
        for v in variants:
            sel = means[(means["budget"] == budget) & (means["variant"] == v)]
            f = fit_parabola(sel["params"], sel["loss"])
            recs.append({"budget": budget, "variant": v, "n_sizes": f.n_sizes,
                         "opt_params": f.opt_params, "opt_loss": f.opt_loss, "flag": f.flag,
                         "coeffs": f.coeffs, "params_min": sel["params"].min(),
                         "params_max": sel["params"].max()})
    return pd.DataFrame.from_records(recs, columns=FIT_COLUMNS)


def fit_warnings(fits: pd.DataFrame) -> list[str]:
    """One line per flagged fit (edge of grid, too few sizes, no minimum)."""
    return [f"budget {budget_tag(f.budget)} FLOPs, {f.variant}: {f.flag}" + (
        f" ({compact(f.opt_params)} params, grid {compact(f.params_min)}..{compact(f.params_max)}: "
        "an extrapolation; extend the grid)" if f.flag.startswith("edge") else "")
        for f in fits.itertuples() if f.flag]


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
    f = fits[fits.budget == budget].set_index("variant")
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
