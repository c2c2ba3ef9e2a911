"""Eval curves of a results folder and their compute-optimal envelope (no matplotlib, no torch).

A run is evaluated at the same fractions k/eval_points of its budget as every other run, so
the runs of a budget share their x positions. An eval curve here is one (budget, variant,
model)'s eval losses at those fractions, averaged over seeds, at the mean FLOPs (and training
time) of its seeds' evaluations. A variant is scored by the loss the verdict scores it on
(roles.verdict_metric: a MoD's causal eval loss, a dense model's eval loss).

The compute-optimal envelope of a variant is the lower envelope of its eval curves across
sizes (and budgets): at each x where some curve was evaluated, the least loss any of its
curves reaches there, each curve read between its own evaluations by linear interpolation in
log x. On the FLOPs axis a curve's points sit at their nominal FLOPs (budget_frac x budget,
`nominal_flops`), within half a step of what each run trained, so the sizes of a budget share
their x positions and are compared at the same FLOPs, not at a size's own last step (Kaplan et al. 2020 fig. 2; Hoffmann et al. 2022 fig. 2, left, draw it over training
curves). A curve's points before the end of its run are mid-schedule (the learning rate has
not decayed), so the envelope is an upper bound on what a run trained to that x would reach.

Training time is what the trainer's throughput fields say training took, step by step
(`tokens / tokens_per_s` of each train row, summed): evaluation and checkpoints left out,
so a MoD's second (causal) evaluation pass does not count against it. It is the time of the
machine that trained the run, not a property of the model.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from modexp.analysis import results as A
from modexp.analysis.roles import verdict_metric
from modexp.records import EVAL, TRAIN

CURVE_KEYS = ["budget", "variant", "kind", "model", "family", "params"]


def scored_column(kind: str, ev: pd.DataFrame) -> str:
    """The eval column that scores a run of this kind: the causal loss for a MoD that has one
    (a MoD trained without a causal method has only its top-k loss), else eval_loss."""
    if verdict_metric(kind) == "causal" and EVAL.eval_loss_causal in ev and ev[EVAL.eval_loss_causal].notna().any():
        return EVAL.eval_loss_causal
    return EVAL.eval_loss


def training_time(train: pd.DataFrame) -> pd.Series:
    """Seconds of training up to each train row (indexed by step): the sum over rows of the
    tokens each trained over its throughput. Rows without throughput fall back to wall_time
    (evaluation included); none at all: an empty series."""
    if train.empty or TRAIN.tokens_per_s not in train or train[TRAIN.tokens_per_s].isna().all():
        wall = train[TRAIN.wall_time] if TRAIN.wall_time in train else pd.Series(dtype=float)
        return pd.Series(wall.to_numpy(), index=train["step"].to_numpy()).dropna()
    tr = train.sort_values("step")
    tokens = tr["tokens"].astype(float)
    dt = tokens.diff().fillna(tokens.iloc[0]) / tr[TRAIN.tokens_per_s].where(tr[TRAIN.tokens_per_s] > 0)
    return pd.Series(dt.fillna(0).cumsum().to_numpy(), index=tr["step"].to_numpy())


def _at_steps(times: pd.Series, steps: pd.Series) -> np.ndarray:
    """Training time at each eval step (the train row logged at that step; interpolated by
    step where there is none)."""
    if times.empty:
        return np.full(len(steps), np.nan)
    return np.interp(steps.to_numpy(float), times.index.to_numpy(float), times.to_numpy(float))


def eval_points(res: A.Results) -> pd.DataFrame:
    """Every run's eval rows: CURVE_KEYS, seed, run_id, budget_frac, flops, train_time, loss
    (the scored one), metric ('causal' or 'topk'), complete (the run finished)."""
    frames = []
    for r in res.runs[res.runs.run_id.isin(list(res.metrics))].itertuples():
        ev = res.rows(r.run_id, "eval")
        if ev.empty:
            continue
        col = scored_column(r.kind, ev)
        frames.append(pd.DataFrame({
            "budget": r.budget, "variant": r.variant, "kind": r.kind, "model": r.model,
            "family": r.family, "params": r.params, "seed": r.seed, "run_id": r.run_id,
            "budget_frac": ev["budget_frac"].to_numpy(float) if "budget_frac" in ev
            else (ev["flops"] / r.total_flops).to_numpy(float),
            "flops": ev["flops"].to_numpy(float),
            "train_time": _at_steps(training_time(res.rows(r.run_id, "train")), ev["step"]),
            "loss": ev[col].to_numpy(float), "metric": "causal" if col == EVAL.eval_loss_causal else "topk",
            "complete": bool(r.complete)}))
    cols = [*CURVE_KEYS, "seed", "run_id", "budget_frac", "flops", "train_time", "loss", "metric",
            "complete"]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=cols)


def eval_curves(res: A.Results) -> pd.DataFrame:
    """Eval curves averaged over seeds: one row per (CURVE_KEYS, budget_frac) with flops,
    train_time and loss means, n (seeds) and nominal_flops, in params then budget_frac order."""
    pts = eval_points(res).dropna(subset=["loss"])
    if pts.empty:
        return pd.DataFrame(columns=[*CURVE_KEYS, "budget_frac", "flops", "train_time", "loss", "n"])
    pts["budget_frac"] = pts["budget_frac"].round(9)  # nominal fractions: one key per evaluation
    out = (pts.groupby([*CURVE_KEYS, "budget_frac"], dropna=False)
           .agg(flops=("flops", "mean"), train_time=("train_time", "mean"), loss=("loss", "mean"),
                n=("loss", "size"), metric=("metric", "first")).reset_index())
    out["nominal_flops"] = out["budget_frac"] * out["budget"]
    return out.sort_values(["params", "budget", "budget_frac"]).reset_index(drop=True)


def envelope(curves: pd.DataFrame, x: str = "nominal_flops") -> pd.DataFrame:
    """Per variant, the lower envelope of its curves over x ('nominal_flops', 'train_time'): at each
    x where one of its curves has a point, the least loss of the curves that span that x (read
    by linear interpolation in log x between a curve's own points). Columns: variant, x, loss
    and the (model, budget) whose curve gives it."""
    rows = []
    for variant, vc in curves.dropna(subset=[x, "loss"]).groupby("variant", sort=False):
        lines = [(k, g.sort_values(x)) for k, g in vc.groupby(["model", "budget"], sort=False)]
        for at in np.unique(vc[x].to_numpy(float)):
            best = None
            for (model, budget), g in lines:
                xs, ys = g[x].to_numpy(float), g["loss"].to_numpy(float)
                if xs[0] <= at <= xs[-1] and at > 0:
                    y = float(np.interp(np.log(at), np.log(xs), ys))
                    if best is None or y < best[0]:
                        best = (y, model, budget)
            if best is not None:
                rows.append({"variant": variant, x: at, "loss": best[0], "model": best[1],
                             "budget": best[2]})
    return pd.DataFrame(rows, columns=["variant", x, "loss", "model", "budget"])
