"""Eval loss against training FLOPs and against training time, with each variant's
compute-optimal envelope (curves.py computes both; this module only draws).

Layout of both figures: the first panel overlays every variant's envelope (variants by hue)
over its eval points; then one panel per variant with its eval curves, one per size and
budget, coloured by size on one colour ramp for every panel and labelled at their ends, the
variant's envelope under them in black. The FLOPs figure adds each run's training LM loss,
faint. All panels share the y range, so a variant's panel reads against another's.
"""

from __future__ import annotations

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from modexp.analysis import curves as C
from modexp.analysis import results as A
from modexp.analysis.plot_style import Style, family_styles, header, log_x, sci
from modexp.analysis.text import compact
from modexp.records import TRAIN

SIZE_CMAP, SIZE_RANGE = "plasma", (0.0, 0.78)  # dark purple to orange: no shade too light to read


def size_colors(curves: pd.DataFrame) -> dict:
    """Model -> colour, in params order (the smallest darkest), the same in every panel."""
    sizes = list(curves.groupby("model", sort=False)["params"].min().sort_values().index)
    cmap, (lo, hi) = mpl.colormaps[SIZE_CMAP], SIZE_RANGE
    span = max(len(sizes) - 1, 1)
    return {m: cmap(lo + (hi - lo) * i / span) for i, m in enumerate(sizes)}


def _smooth(y: pd.Series) -> pd.Series:
    """Centred rolling mean: no lag, so the smoothed curve ends where the run ended."""
    return y.rolling(max(1, len(y) // 15), center=True, min_periods=1).mean()


def train_loss(rows: pd.DataFrame) -> pd.Series:
    """LM loss (comparable across variants); train_loss adds MoD's aux/predictor terms."""
    lm = rows[TRAIN.lm_loss] if TRAIN.lm_loss in rows else pd.Series(dtype=float)
    return lm if lm.notna().any() else rows.get(TRAIN.train_loss, pd.Series(dtype=float))


def _ylim(curves: pd.DataFrame) -> tuple[float, float] | None:
    """From the least eval loss to the highest after a quarter of the budget (the first
    evaluations, far above the rest, would flatten every difference)."""
    y = curves["loss"].dropna()
    if y.empty:
        return None
    late = curves.loc[curves["budget_frac"] >= 0.25, "loss"].dropna()
    lo, hi = y.min(), (late if len(late) else y).max()
    pad = 0.06 * (hi - lo or 1.0)
    return lo - pad, hi + pad


def _fig(res: A.Results, style: Style, x: str, xlabel: str, what: str, train: bool) -> Figure:
    curves = C.eval_curves(res)
    ex = "nominal_flops" if x == "flops" else x  # where the envelope's points sit
    env = C.envelope(curves, ex)
    variants = [v for v in style.order if v in set(curves["variant"])]
    fig = Figure(figsize=(4.6 * (len(variants) + 1) + 2.2, 4.6), layout="constrained")
    axes = fig.subplots(1, len(variants) + 1, squeeze=False, sharey=True)[0]
    colors, fams = size_colors(curves), family_styles(res.runs)
    ax0 = axes[0]
    for v in variants:
        pts, e = curves[curves.variant == v], env[env.variant == v]
        ax0.plot(pts[x], pts["loss"], ls="", marker="o", ms=3, color=style.base(v), alpha=0.35)
        ax0.plot(e[ex], e["loss"], color=style.base(v), lw=2.4)
    ax0.set_title("compute-optimal envelopes (lower envelope over sizes)", fontsize=10)
    panel_labels = []
    for ax, v in zip(axes[1:], variants):
        vc, labels = curves[curves.variant == v], []
        panel_labels.append((ax, labels))
        for (model, budget), g in vc.groupby(["model", "budget"], sort=False):
            c, (mk, _) = colors[model], fams.get(g["family"].iloc[0], ("o", "-"))
            if train and x == "flops":
                for r in res.runs[(res.runs.variant == v) & (res.runs.model == model)
                                  & (res.runs.budget == budget)].itertuples():
                    tr = res.rows(r.run_id, "train")
                    if len(tr):
                        ax.plot(tr["flops"], _smooth(train_loss(tr)), color=c, lw=0.8, alpha=0.22)
            g = g.sort_values(x)
            ax.plot(g[x], g["loss"], color=c, lw=1.5, marker=mk, ms=3.5)
            if budget == vc.loc[vc.model == model, "budget"].max():  # one label per size
                labels.append((budget, g[x].iloc[-1], g["loss"].iloc[-1], model, c))
        e = env[env.variant == v]
        ax.plot(e[ex], e["loss"], color="k", lw=2.6, alpha=0.35, zorder=0)
        metric = "causal routing" if (vc["metric"] == "causal").any() else "eval loss"
        ax.set_title(f"{v}: eval curves by size ({metric})" if metric != "eval loss"
                     else f"{v}: eval curves by size", fontsize=10)
    lim = _ylim(curves)
    for ax in axes:
        if lim:
            ax.set_ylim(*lim)
        if x == "flops":
            for b in sorted(res.runs.budget.unique()):
                ax.axvline(b, color="0.55", ls=":", lw=1)
        xs = curves.loc[curves[x] > 0, x] if len(curves) else pd.Series(dtype=float)
        if len(xs):  # the eval points' range: training curves start earlier, faint and clipped
            log_x(ax, sci if x == "flops" else _seconds)
            ax.set_xlim(xs.min() / 1.4, xs.max() * 1.4)
        ax.set_xlabel(xlabel)
        ax.grid(True, which="both", alpha=0.25)
    for ax, labels in panel_labels:
        _label_ends(ax, labels)
    axes[0].set_ylabel("eval loss (nats/token; MoD: causal routing)")
    handles = [Line2D([], [], color=style.base(v), lw=2.4, label=f"{v} envelope") for v in variants]
    handles += [Line2D([], [], color="0.3", lw=1.5, marker="o", ms=3.5,
                       label="eval curve (mean over seeds), labelled by size")]
    if train and x == "flops":
        handles.append(Line2D([], [], color="0.3", lw=0.8, alpha=0.4, label="train LM loss (smoothed)"))
    handles.append(Line2D([], [], color="k", lw=2.6, alpha=0.35, label="that variant's envelope"))
    if x == "flops":
        handles.append(Line2D([], [], color="0.55", ls=":", lw=1, label="FLOP budget"))
    if len(fams) > 1:
        handles += [Line2D([], [], color="0.3", ls="", marker=mk, label=f"family {f}")
                    for f, (mk, _) in fams.items()]
    handles += [Line2D([], [], color=c, lw=3, label=f"{m} ({compact(style.params.get(m, np.nan))} params)")
                for m, c in colors.items()]
    fig.legend(handles=handles, loc="outside right upper", fontsize=8)
    header(fig, res, what)
    return fig


def _label_ends(ax, labels) -> None:
    """Size names at their curves' ends, pushed apart vertically where curves of one budget
    end close together (at least 3.5% of the y range between labels)."""
    lo, hi = ax.get_ylim()
    gap = 0.035 * (hi - lo)
    by_budget: dict = {}
    for b, *rest in labels:
        by_budget.setdefault(b, []).append(rest)
    for group in by_budget.values():
        group.sort(key=lambda t: t[1])
        placed = []
        for xe, ye, name, c in group:
            y = max(ye, placed[-1] + gap) if placed else ye
            placed.append(y)
            ax.annotate(name, (xe, ye), xytext=(xe * 1.06, y), textcoords="data", fontsize=7,
                        color=c, va="center", annotation_clip=False)


def _seconds(v: float) -> str:
    return f"{v:g} s"


def fig_loss_flops(res: A.Results, style: Style) -> Figure:
    """Eval loss vs cumulative training FLOPs, envelopes per variant."""
    return _fig(res, style, "flops", "cumulative training FLOPs", "eval loss vs training FLOPs", True)


def fig_loss_time(res: A.Results, style: Style) -> Figure:
    """Eval loss vs training time (this machine's; evaluation and checkpoints excluded)."""
    return _fig(res, style, "train_time", "training time (this machine's; evals excluded)",
                "eval loss vs training time on the machine that trained the runs (evaluation and "
                "checkpoints excluded)", False)


def has_time(res: A.Results) -> bool:
    """Whether any run logged a training time (train rows with throughput or wall time)."""
    return C.eval_curves(res)["train_time"].notna().any()
