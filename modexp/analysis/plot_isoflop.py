"""isoFLOP figures: per-budget profiles (seed means with standard errors, parabola fits,
interior optima with their 95% bootstrap intervals) and the compute-optimal frontier."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from modexp.analysis import results as A
from modexp.analysis import isoflop as I
from modexp.analysis.plot_style import Style, figure, header, log_x, sci
from modexp.naming import budget_tag


def fig_isoflop(res: A.Results, means: pd.DataFrame, fits: pd.DataFrame, style: Style) -> Figure:
    """Per budget: loss vs params (fits, optima) and loss vs forward FLOPs per token."""
    budgets = sorted(res.runs.budget.unique())
    fig, axes = figure(len(budgets), 2, 13, 4.2)
    topk = fits[fits.metric == "topk"]
    for (ax_p, ax_f), budget in zip(axes, budgets):
        warns = []
        for v in style.order:
            sel = means[(means.budget == budget) & (means.variant == v)].sort_values("params")
            fit = topk[(topk.budget == budget) & (topk.variant == v)]
            c = style.base(v)
            seeds = res.runs[(res.runs.budget == budget) & (res.runs.variant == v) & res.runs.complete]
            ax_p.scatter(seeds.params, seeds.final_eval_loss, s=10, color=c, alpha=0.4, lw=0)
            ax_p.errorbar(sel.params, sel.loss, yerr=sel.loss_se, fmt="o", color=c, ms=7,
                          mec="k", mew=0.5, capsize=3)
            if len(fit):
                warns += _draw_fit(ax_p, fit.iloc[0], c)
            ax_f.plot(sel.forward_flops_per_token, sel.loss, "o-", color=c, ms=6, mec="k", mew=0.5)
            for p in sel.itertuples():
                ax_f.annotate(p.model, (p.forward_flops_per_token, p.loss), xytext=(4, 4),
                              textcoords="offset points", fontsize=7, color="0.3")
        tag = budget_tag(budget)
        log_x(ax_p, I.compact)
        log_x(ax_f, sci)
        ax_p.set(xlabel="parameters (params, log scale)", ylabel="final eval loss (nats/token)",
                 title=f"isoFLOP profile at {tag} training FLOPs")
        ax_f.set(xlabel="forward FLOPs per token (one forward pass)",
                 ylabel="final eval loss (nats/token)", title=f"{tag} FLOPs: loss vs inference cost")
        _pad_y(ax_p)
        _label_minima(ax_p, topk[topk.budget == budget], style)
        for ax in (ax_p, ax_f):
            ax.grid(True, which="both", alpha=0.25)
        if not len(means[means.budget == budget]):
            warns = ["no finished runs at this budget yet"]
        if warns:
            ax_p.text(0.01, 0.99, "\n".join(warns), transform=ax_p.transAxes, va="top", fontsize=8,
                      color="darkred", bbox=dict(fc="white", ec="darkred", alpha=0.85))
    extra = [Line2D([], [], color="k", marker="o", ls="", label="final eval loss (seed mean ± s.e.)"),
             Line2D([], [], color="k", lw=1.5, label="parabola fit in log10(params)"),
             Line2D([], [], color="k", marker="*", ms=12, ls="", label="interior optimum (95% bootstrap CI)")]
    fig.legend(handles=style.variant_handles() + extra, loc="outside right upper", fontsize=8)
    header(fig, res, "isoFLOP profiles (Hoffmann et al. 2022, approach 2)")
    return fig


def _draw_fit(ax, fit, color) -> list[str]:
    """The parabola over the grid, its interior minimum (a star with its CI) or the reason."""
    if fit.coeffs is None:
        return [f"{fit.variant}: no verdict: {fit.reason}"]
    lo, hi = math.log10(fit.params_min), math.log10(fit.params_max)
    pad = 0.1 * (hi - lo)
    xs = np.linspace(lo - pad, hi + pad, 200)  # never drawn out to an extrapolated minimum
    ax.plot(10 ** xs, np.polyval(fit.coeffs, xs), color=color, lw=1.5, alpha=0.85)
    if fit.status != "ok":
        return [f"{fit.variant}: no verdict: {fit.reason}"]
    ci = fit.opt_params_ci
    xerr = None if ci is None else [[fit.opt_params - ci[0]], [ci[1] - fit.opt_params]]
    ax.errorbar([fit.opt_params], [fit.opt_loss], xerr=xerr, fmt="*", ms=16, color=color,
                mec="k", mew=0.6, capsize=4, zorder=5)
    return []


def _label_minima(ax, fits: pd.DataFrame, style: Style) -> None:
    """Label each interior optimum (size, loss, intervals) in the band _pad_y leaves."""
    shown = [f for f in fits.itertuples() if f.status == "ok"]
    for i, f in enumerate(shown):
        c = style.base(f.variant)
        ci = f.opt_loss_ci
        loss = f"{f.opt_loss:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")
        pci = f.opt_params_ci
        params = I.compact(f.opt_params) + (f" [{I.compact(pci[0])}, {I.compact(pci[1])}]" if pci else "")
        ax.text(0.5, 0.03 + 0.075 * (len(shown) - 1 - i), f"\u2605 {f.variant} optimum: "
                f"{params} params, loss {loss}", transform=ax.transAxes,
                ha="center", va="bottom", fontsize=8.5, color=c,
                bbox=dict(fc="white", ec=c, alpha=0.9, pad=2))


def _pad_y(ax) -> None:
    """Room below the data for the minimum labels."""
    lo, hi = ax.get_ylim()
    ax.set_ylim(lo - 0.35 * (hi - lo), hi + 0.15 * (hi - lo))


def fig_frontier(res: A.Results, frontier: dict, style: Style) -> Figure:
    """N_opt(C) and L_opt(C) per variant, side by side, with the power-law fits."""
    fig, ((ax_n, ax_l),) = figure(1, 2, 12, 4.2)
    for v, f in frontier.items():
        if f["status"] != "ok":
            continue
        C = np.asarray(f["budgets"])
        cs = np.geomspace(C.min(), C.max(), 50)
        c = style.base(v)
        for ax, key, pts in ((ax_n, "params", f["opt_params"]), (ax_l, "loss", f["opt_loss"])):
            law = f[key]
            ax.plot(C, pts, "*", ms=12, color=c, mec="k", mew=0.5)
            ax.plot(cs, law["coef"] * cs ** law["exponent"], color=c, lw=1.5,
                    label=f"{v}: exponent {law['exponent']:.3f} ({f['n_budgets']} budgets)")
    log_x(ax_n, sci)
    log_x(ax_l, sci)
    ax_n.set_yscale("log")
    ax_n.set(xlabel="training FLOPs C", ylabel="compute-optimal params N_opt", title="N_opt(C) = A C^a")
    ax_l.set(xlabel="training FLOPs C", ylabel="loss at the optimum L_opt", title="L_opt(C) = B C^b")
    for ax in (ax_n, ax_l):
        ax.grid(True, which="both", alpha=0.25)
        ax.legend(fontsize=8)
    header(fig, res, "compute-optimal frontier (interior optima only)")
    return fig
