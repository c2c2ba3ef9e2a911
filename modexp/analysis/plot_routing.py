"""The MoD routing figures: how routing scores and where it routes (routing.py computes what
they draw; matplotlib's object API, never pyplot).

mod_routing: one row per budget and MoD variant, colours by size (plot_curves.size_colors):
eval loss with top-k and with causal routing; the causal decision against top-k membership
(accuracy, recall, and the accuracy of never routing, which accuracy alone cannot tell from
a useless predictor); the routed fraction by token position at the last evaluation (one line
style per routed layer), where the run files have it. Each panel's legend names every line
style it draws.

routing_heatmap: per MoD (budget, variant, size), a layer x FLOPs heatmap of the routed
fraction: each routed layer's causal decisions at evaluation above what top-k routed in
training, dense layers grey; a diverging scale whose white is the planned capacity, so a
layer routing more (red) or less (blue) than planned is seen at once.
"""

from __future__ import annotations

import math

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from modexp.analysis import results as A
from modexp.analysis import routing as R
from modexp.analysis.curves import eval_curves
from modexp.analysis.plot_curves import size_colors
from modexp.analysis.plot_style import LINES, Style, header, log_x, sci
from modexp.analysis.roles import decides
from modexp.naming import budget_tag
from modexp.records import EVAL

HEAT_CMAP = "RdBu_r"


def fig_routing(res: A.Results, style: Style) -> Figure:
    groups = R.mod_groups(res)
    rows = list(dict.fromkeys((b, v) for (b, v, _), _ in groups))
    with_pos = R.has_positions(res)
    fig = Figure(figsize=(5.0 * (3 if with_pos else 2) + 2.0, 4.0 * len(rows) + 0.7), layout="constrained")
    axes = fig.subplots(len(rows), 3 if with_pos else 2, squeeze=False)
    colors = size_colors(eval_curves(res))
    for (budget, variant), ax_row in zip(rows, axes):
        ax_l, ax_a = ax_row[0], ax_row[1]
        n_routed = 0
        for (b, v, model), ids in groups:
            if (b, v) != (budget, variant):
                continue
            c, ev = colors.get(model, "k"), _mean_eval(res, ids)
            ax_l.plot(ev.flops, ev.eval_loss, color=c, marker="o", ms=3)
            if EVAL.eval_loss_causal in ev and ev.eval_loss_causal.notna().any():
                ax_l.plot(ev.flops, ev.eval_loss_causal, color=c, ls="--", marker="s", ms=3)
            _draw_predictor(ax_a, ev, res, ids[0], c)
            if with_pos:
                n_routed = max(n_routed, _draw_positions(ax_row[2], res, ids, c))
        tag = f"{budget_tag(budget)} FLOPs, {variant}"
        _log_x(ax_l)
        _log_x(ax_a)
        ax_l.set(xlabel="cumulative training FLOPs", ylabel="eval loss (nats/token)",
                 title=f"{tag}: top-k vs causal routing at eval")
        ax_l.legend(handles=[Line2D([], [], color="0.3", marker="o", ms=4, label="top-k routing"),
                             Line2D([], [], color="0.3", ls="--", marker="s", ms=4, label="causal routing")],
                    fontsize=7, loc="upper right")
        ax_a.set(xlabel="cumulative training FLOPs", ylabel="fraction",
                 title=f"{tag}: causal decision vs top-k membership", ylim=(-0.03, 1.03))
        ax_a.legend(handles=PREDICTOR_HANDLES, fontsize=7, loc="best")
        if with_pos:
            _position_axes(ax_row[2], res, tag, n_routed)
        for ax in ax_row:
            ax.grid(True, alpha=0.25)
    params = res.runs.groupby("model")["params"].min()
    fig.legend(handles=[Line2D([], [], color=c, lw=3, label=f"{m} ({params[m]:,.0f} params)")
                        for m, c in colors.items() if m in set(k[2] for k, _ in groups)],
               loc="outside right upper", fontsize=8, title="colour: size", title_fontsize=8)
    header(fig, res, "Mixture-of-Depths routing (eval: mean over seeds)")
    return fig


PREDICTOR_HANDLES = [
    Line2D([], [], color="0.3", marker="o", ms=4, label="accuracy (top-k pass)"),
    Line2D([], [], color="0.3", ls=":", marker="v", ms=4, label="recall (top-k pass)"),
    Line2D([], [], color="0.3", ls="--", marker="^", ms=4, label="recall (causal pass)"),
    Line2D([], [], color="0.5", ls="-.", label="accuracy of never routing (1 - capacity)")]


def _log_x(ax) -> None:
    if ax.has_data():
        log_x(ax, sci)


def _mean_eval(res: A.Results, ids: list[str]):
    """The group's eval rows, numeric columns averaged over seeds at each budget fraction."""
    frames = [f for f in (res.rows(i, "eval") for i in ids) if len(f)]
    if not frames:  # a partial run stopped before its first evaluation
        return pd.DataFrame(columns=["budget_frac", "flops", EVAL.eval_loss], dtype=float)
    ev = pd.concat(frames, ignore_index=True)
    ev["budget_frac"] = ev["budget_frac"].round(9)
    cols = [c for c in A.NUMBER_KEYS if c in ev and c != "budget_frac"]
    return ev.groupby("budget_frac")[cols].mean().reset_index()


def _draw_predictor(ax, ev, res: A.Results, run_id: str, color) -> None:
    """Accuracy alone hides a predictor that never routes (it scores 1 - capacity), so recall
    and that trivial baseline are drawn with it."""
    if EVAL.predictor_acc not in ev or ev.predictor_acc.isna().all():
        return
    ax.plot(ev.flops, ev.predictor_acc, color=color, marker="o", ms=3)
    if EVAL.predictor_recall in ev:
        ax.plot(ev.flops, ev.predictor_recall, color=color, ls=":", marker="v", ms=3)
    if EVAL.predictor_recall_causal in ev and not ev.predictor_recall_causal.isna().all():
        # On the causal pass earlier layers route by their own decisions, so later predictors
        # see inputs they were not trained on: recall there is what sampling gets.
        ax.plot(ev.flops, ev.predictor_recall_causal, color=color, ls="--", marker="^", ms=3)
    caps = res.runs.loc[res.runs.run_id == run_id, "capacities"].iloc[0]
    caps = [c for c in (caps if isinstance(caps, list) else []) if c is not None]
    if caps:
        ax.axhline(1 - float(np.mean(caps)), color="0.5", ls="-.", lw=1)


def _draw_positions(ax, res: A.Results, ids: list[str], color) -> int:
    """The group's routed fraction by position bin, one line style per routed layer; returns
    the number of routed layers drawn."""
    prof = R.position_profile(res, ids)
    if prof is None:
        return 0
    starts, fracs = prof
    edges = R.bin_edges(starts)
    for i, f in enumerate(fracs):  # each bin a flat step over its positions
        ax.stairs(f, edges, color=color, ls=LINES[i % len(LINES)], lw=1.4, baseline=None)
    return len(fracs)


def _position_axes(ax, res: A.Results, tag: str, n_routed: int) -> None:
    caps = [c for cs in res.runs.loc[decides(res.runs), "capacities"] if isinstance(cs, list)
            for c in cs if c is not None]
    handles = [Line2D([], [], color="0.3", ls=LINES[i % len(LINES)], lw=1.4,
                      label=f"routed layer {i + 1} of {n_routed}") for i in range(n_routed)]
    if caps and len(set(caps)) == 1:
        ax.axhline(caps[0], color="k", ls=(0, (1, 3)), lw=1.2)
        handles.append(Line2D([], [], color="k", ls=(0, (1, 3)), lw=1.2, label=f"capacity {caps[0]:g}"))
    ax.set(xlabel="token position in the sequence (bin start)", ylabel="fraction of the bin's tokens routed",
           title=f"{tag}: causal routing by position (last eval)")
    ax.set_ylim(bottom=0)
    if handles:
        ax.legend(handles=handles, fontsize=7, loc="best")


def fig_routing_heatmap(res: A.Results) -> Figure:
    groups = R.mod_groups(res)
    grids = [(key, R.layer_grid(res, ids)) for key, ids in groups]
    grids = [(k, g) for k, g in grids if g.values.size]
    n = max(len(grids), 1)
    ncols = min(n, 4)
    nrows = math.ceil(n / ncols)
    height = 0.9 + 0.32 * max((len(g.labels) for _, g in grids), default=2)
    fig = Figure(figsize=(4.4 * ncols + 0.8, height * nrows + 1.0), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    caps = {g.capacity for _, g in grids}
    shared = len(caps) == 1  # one scale for every panel, one colour bar for the figure
    top = max((_top(g) for _, g in grids), default=1.0)
    for ax, ((budget, variant, model), g) in zip(axes, grids):
        mesh = _heat(ax, g, top if shared else _top(g))
        ax.set_title(f"{budget_tag(budget)} FLOPs, {variant}, {model}", fontsize=9)
        if not shared:
            _colorbar(fig, mesh, ax, g.capacity)
    if shared and grids:
        _colorbar(fig, mesh, list(axes[:len(grids)]), grids[0][1].capacity)
    for ax in axes[len(grids):]:
        ax.set_axis_off()
    header(fig, res, "routed fraction by layer over training (causal decisions at eval; top-k in "
                     "training, since the previous eval; grey: dense layer)")
    return fig


def _top(g: R.LayerGrid) -> float:
    """The scale's top: twice the capacity (white in the middle), or the grid's highest value."""
    cap = g.capacity if g.capacity else 0.5
    return float(max(2 * cap, np.nanmax(g.values) if np.isfinite(g.values).any() else 1.0, cap + 1e-6))


def _colorbar(fig, mesh, ax, capacity) -> None:
    cb = fig.colorbar(mesh, ax=ax, fraction=0.06 if not isinstance(ax, list) else 0.02, pad=0.02)
    cb.set_label("routed fraction" + (f" (white: capacity {capacity:g})" if capacity else ""), fontsize=7)
    cb.ax.tick_params(labelsize=7)


def _heat(ax, g: R.LayerGrid, top: float):
    """One grid as cells centred on its eval points (log FLOPs), values written in."""
    x = np.log10(g.flops)
    mids = (x[1:] + x[:-1]) / 2
    step = (x[1] - x[0]) if len(x) > 1 else 0.1
    edges = 10 ** np.concatenate([[x[0] - step / 2], mids, [x[-1] + (x[-1] - mids[-1] if len(mids) else step / 2)]])
    cap = g.capacity if g.capacity else 0.5
    cmap = mpl.colormaps[HEAT_CMAP].with_extremes(bad="0.85")
    vals = np.ma.masked_invalid(g.values)
    mesh = ax.pcolormesh(edges, np.arange(len(g.labels) + 1), vals, cmap=cmap,
                         norm=TwoSlopeNorm(vcenter=cap, vmin=0.0, vmax=top), shading="flat")
    if g.values.shape[1] <= 12:
        for (i, j), v in np.ndenumerate(g.values):
            if np.isfinite(v):  # white on the dark ends of the scale, black on the light middle
                r, gr, b, _ = cmap(mesh.norm(v))
                ink = "w" if 0.299 * r + 0.587 * gr + 0.114 * b < 0.5 else "k"
                ax.text(math.sqrt(edges[j] * edges[j + 1]), i + 0.5, f"{v:.2f}", ha="center",
                        va="center", fontsize=6, color=ink)
    ax.set_xscale("log")
    log_x(ax, sci)
    ax.set_yticks(np.arange(len(g.labels)) + 0.5, g.labels, fontsize=7)
    ax.invert_yaxis()  # first layer on top, as a model is read
    ax.set_xlabel("cumulative training FLOPs (eval points)", fontsize=8)
    return mesh
