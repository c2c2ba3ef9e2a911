"""The summary table: per budget and size, each variant's final loss (seed mean, n), MoD vs
vanilla in percent and the forward-FLOPs ratio at equal size; then one 'isoFLOP optimum' row
per budget with each variant's envelope optimum (envelope.py). No torch."""

from __future__ import annotations

import math

import pandas as pd

from modexp.analysis.roles import variant_order


def summary_table(runs: pd.DataFrame, means: pd.DataFrame, envs: pd.DataFrame) -> pd.DataFrame:
    """Rows per budget: every planned size (by family, then params), then the optimum row."""
    order, vanillas, mods = variant_order(runs)
    depth = runs.groupby("family")["n_layers"].min()
    sizes = runs.groupby("model", sort=False).agg(params=("params", "min"), family=("family", "first"))
    sizes["depth"] = [depth[f] if pd.notna(depth[f]) else math.inf for f in sizes["family"]]
    sizes = sizes.sort_values(["depth", "family", "params"])
    planned = runs[["budget", "model"]].drop_duplicates()
    rows = []
    for budget in sorted(planned["budget"].unique()):
        models = [m for m in sizes.index if ((planned.budget == budget) & (planned.model == m)).any()]
        for m in models:
            rows.append(_size_row(runs, means, budget, m, sizes.at[m, "family"], order, vanillas, mods))
        rows.append(_optimum_row(envs, budget, order, vanillas, mods))
    return pd.DataFrame.from_records(rows)


def _size_row(runs, means, budget, model, family, order, vanillas, mods) -> dict:
    planned = runs[(runs.budget == budget) & (runs.model == model)]
    got = means[(means.budget == budget) & (means.model == model)].set_index("variant")
    cells = {v: (float(planned.loc[planned.variant == v, "params"].min()),
                 got.at[v, "loss"] if v in got.index else math.nan,
                 int(got.at[v, "n"]) if v in got.index else 0,
                 got.at[v, "loss_causal"] if v in got.index else math.nan) for v in order}
    fwd = planned.groupby("variant")["forward_flops_per_token"].first()
    note = "; ".join(f"{r.variant} s{r.seed}: {_state_text(r)}"
                     for r in planned.itertuples() if not r.complete)
    return _row(budget, model, family, cells, fwd, vanillas, mods, note)


def _optimum_row(envs, budget, order, vanillas, mods) -> dict:
    """Each variant's envelope optimum (top-k; the causal loss column: the causal envelope's)."""
    here = envs[envs.budget == budget]
    f = here[here.metric == "topk"].set_index("variant")
    causal = here[here.metric == "causal"].set_index("variant")["opt_loss"]
    cells = {v: (f.at[v, "opt_params"], f.at[v, "opt_loss"], int(f.at[v, "n_sizes"]),
                 causal.get(v, math.nan))
             if v in f.index else (math.nan, math.nan, 0, math.nan) for v in order}
    note = "; ".join(f"{v}: {f.at[v, 'flag']}" for v in order if v in f.index and f.at[v, "flag"])
    best = "; ".join(f"{v} {f.at[v, 'best_family']}" for v in order
                     if v in f.index and isinstance(f.at[v, "best_family"], str))
    return _row(budget, "isoFLOP optimum", best or "envelope", cells, {}, vanillas, mods, note)


def _row(budget, model, family, cells: dict, fwd, vanillas, mods, note: str) -> dict:
    """cells: variant -> (params, loss, n, causal loss). n counts seeds, or sizes in a fit."""
    row = {"budget": budget, "model": model, "family": family}
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
