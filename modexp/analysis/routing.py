"""What the routing figures draw, from the run files alone (no matplotlib, no torch).

Per MoD (budget, variant, model), seeds averaged:
- `layer_grid`: a layer x FLOPs table of the routed fraction, one column per evaluation (at
  its nominal FLOPs, budget_frac x budget). Each routed layer has two rows: the fraction its
  causal decisions route at evaluation (routed_frac_causal, what sampling gets) and the
  fraction top-k routed in training (routed_frac of the train rows up to that evaluation,
  since the previous one; k/T by construction, the reference the causal row is read against).
  Dense layers are rows of NaN, so the table covers every layer of the model.
- `position_profile`: the routed fraction by token position at the last evaluation (the
  causal pass's decisions in position bins: routed_frac_causal_pos, evaluation.position_bins).
  Results written before that statistic have none, and the figure leaves its panel out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from modexp.analysis import results as A
from modexp.analysis.roles import decides
from modexp.records import EVAL, TRAIN

GROUP = ["budget", "variant", "model"]


@dataclass
class LayerGrid:
    """Rows (labels) x columns (eval points) of routed fractions; NaN where not routed/logged."""

    labels: list[str]
    flops: np.ndarray  # (C,) nominal FLOPs of each column
    values: np.ndarray  # (rows, C)
    capacity: float | None  # the mean planned capacity of the routed layers


def mod_groups(res: A.Results) -> list[tuple[tuple, list[str]]]:
    """((budget, variant, model), run ids with metrics) of every MoD group, in budget, variant
    then params order."""
    mod = res.runs[decides(res.runs) & res.runs.run_id.isin(list(res.metrics))]
    mod = mod.sort_values(["budget", "params"], kind="stable")
    order = {v: i for i, v in enumerate(dict.fromkeys(res.runs.variant))}
    keys = sorted(dict.fromkeys(map(tuple, mod[GROUP].to_numpy())),
                  key=lambda k: (k[0], order[k[1]], float(mod.loc[mod.model == k[2], "params"].min())))
    return [(k, list(mod.loc[(mod.budget == k[0]) & (mod.variant == k[1]) & (mod.model == k[2]),
                             "run_id"])) for k in keys]


def routed_layers(res: A.Results, run_id: str) -> tuple[list[int], int]:
    """(indices of the routed layers, number of layers) from the plan's capacities."""
    caps = res.runs.loc[res.runs.run_id == run_id, "capacities"].iloc[0]
    caps = caps if isinstance(caps, list) else []
    return [i for i, c in enumerate(caps) if c is not None], len(caps)


def _lists(rows: pd.DataFrame, key: str, n: int) -> np.ndarray:
    """(len(rows), n) of a per-routed-layer list column; NaN where absent or malformed."""
    out = np.full((len(rows), n), np.nan)
    for i, v in enumerate(rows.get(key, pd.Series([None] * len(rows)))):
        if isinstance(v, list) and len(v) == n and all(isinstance(x, (int, float)) for x in v):
            out[i] = v
    return out


def layer_grid(res: A.Results, run_ids: list[str]) -> LayerGrid:
    """The layer x FLOPs routed fractions of one MoD group, mean over its seeds."""
    routed, n_layers = routed_layers(res, run_ids[0])
    caps = res.runs.loc[res.runs.run_id == run_ids[0], "capacities"].iloc[0] or []
    per_seed = []
    for rid in run_ids:
        ev, tr = res.rows(rid, "eval"), res.rows(rid, "train")
        if ev.empty:
            continue
        f = ev["budget_frac"].round(9).to_numpy(float)
        causal = _lists(ev, EVAL.routed_frac_causal, len(routed))
        topk_tr = _lists(tr, TRAIN.routed_frac, len(routed))
        train = np.full_like(causal, np.nan)
        bounds = [-np.inf, *ev["step"].to_numpy(float)]
        for j in range(len(ev)):  # train rows since the previous evaluation, up to this one
            sel = (tr["step"] > bounds[j]).to_numpy() & (tr["step"] <= bounds[j + 1]).to_numpy()
            if sel.any() and not np.isnan(topk_tr[sel]).all():
                train[j] = np.nanmean(topk_tr[sel], axis=0)
        per_seed.append(pd.DataFrame(np.hstack([causal, train]), index=f))
    if not per_seed:
        return LayerGrid([], np.array([]), np.zeros((0, 0)), None)
    mean = pd.concat(per_seed).groupby(level=0).mean().sort_index()
    flops = mean.index.to_numpy(float) * float(res.runs.loc[res.runs.run_id == run_ids[0], "budget"].iloc[0])
    R, rows, labels = len(routed), [], []
    for layer in range(n_layers):
        if layer in routed:
            i = routed.index(layer)
            rows += [mean[i].to_numpy(float), mean[R + i].to_numpy(float)]
            labels += [f"layer {layer}: causal (eval)", f"layer {layer}: top-k (train)"]
        else:
            rows.append(np.full(len(mean), np.nan))
            labels.append(f"layer {layer}: dense")
    cap = [c for c in caps if c is not None]
    return LayerGrid(labels, flops, np.array(rows), float(np.mean(cap)) if cap else None)


def position_profile(res: A.Results, run_ids: list[str]) -> tuple[list[int], np.ndarray] | None:
    """(bin starts, (routed layers, bins) fractions) at the last evaluation, mean over seeds;
    None where no run logged the by-position statistic."""
    starts, per_seed = None, []
    for rid in run_ids:
        ev = res.rows(rid, "eval")
        if ev.empty or EVAL.routed_frac_causal_pos not in ev:
            continue
        last = ev.iloc[-1]
        pos, s = last.get(EVAL.routed_frac_causal_pos), last.get(EVAL.pos_bin_starts)
        if not (isinstance(pos, list) and pos and isinstance(s, list) and all(
                isinstance(p, list) and len(p) == len(s) for p in pos)):
            continue
        if starts is not None and s != starts:
            continue  # another binning (another seq_len): not averaged with the first
        starts = s
        per_seed.append(np.array(pos, dtype=float))
    if not per_seed:
        return None
    return starts, np.mean(per_seed, axis=0)


def bin_edges(starts: list[int]) -> list[int]:
    """The bins' edges, the sequence length last: bins start at round(i T / n), so
    T = starts[-1] n / (n - 1) to within one position (one bin: its start + 1)."""
    n = len(starts)
    return [*starts, round(starts[-1] * n / (n - 1)) if n > 1 else starts[0] + 1]


def has_positions(res: A.Results) -> bool:
    """Whether any MoD run logged the routed fraction by position."""
    return any(position_profile(res, ids) is not None for _, ids in mod_groups(res))
