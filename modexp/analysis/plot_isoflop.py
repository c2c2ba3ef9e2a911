"""isoFLOP figure (Hoffmann et al. 2022, fig. 3 style): one axes per variant with every
budget on it, coloured by budget; per budget every family's seed means and parabola, and
the variant's optimum over families (a star with its 95% loss and params intervals), the
optima of successive budgets joined. Each variant on the loss its verdict uses (a MoD's
causal eval loss where it has one: roles.verdict_metric)."""

from __future__ import annotations

import math
import textwrap

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from modexp.analysis import results as A
from modexp.analysis.isoflop import Analysis
from modexp.analysis.roles import decides
from modexp.analysis.plot_style import budget_colors, family_styles, header, log_x
from modexp.analysis.text import compact
from modexp.naming import budget_tag
from modexp.records import SUMMARY

COLUMNS = {"topk": ("loss", "loss_se", SUMMARY.final_eval_loss),
           "causal": ("loss_causal", "loss_causal_se", SUMMARY.final_eval_loss_causal)}
PANEL_W, PANEL_H, LINE_H = 5.6, 4.6, 0.14


def metric_of(an: Analysis, variant: str) -> str:
    """The metric a variant's panel shows: causal where its envelopes have it, else top-k."""
    e = an.envelopes
    return "causal" if ((e.variant == variant) & (e.metric == "causal")).any() else "topk"


def fig_isoflop(an: Analysis, order: list[str]) -> Figure:
    res = an.results
    shown = [v for v in order if (an.envelopes.variant == v).any()] or order[:1]
    colors, fams = budget_colors(res.runs.budget.unique()), family_styles(res.runs)
    tables = {v: _optimum_lines(an, v, metric_of(an, v), colors) for v in shown}
    text_h = 0.3 + LINE_H * max(len(t) for t in tables.values())
    fig = Figure(figsize=(PANEL_W * len(shown) + 2.2, PANEL_H + text_h + 0.8), layout="constrained")
    grid = fig.add_gridspec(2, len(shown), height_ratios=[PANEL_H, text_h])
    axes = []
    for j, v in enumerate(shown):
        ax = fig.add_subplot(grid[0, j], sharey=axes[0] if axes else None)
        text_ax = fig.add_subplot(grid[1, j])
        text_ax.axis("off")
        axes.append(ax)
        metric = metric_of(an, v)
        _draw_variant(ax, an, v, metric, colors, fams)
        text_ax.text(0, 1, "optimum over families per budget (95% CI):\n" + "\n".join(tables[v]),
                     va="top", ha="left", fontsize=7.5, family="monospace", transform=text_ax.transAxes)
        log_x(ax, compact)
        what = "causal eval loss" if metric == "causal" else "eval loss" if not _decides(res, v) else "top-k eval loss (no causal loss)"
        ax.set(xlabel="parameters (log scale)", ylabel="final eval loss (nats/token)",
               title=f"{v}: {what}")
        ax.grid(True, which="both", alpha=0.25)
    _legend(fig, colors, fams)
    header(fig, res, "isoFLOP profiles: every budget and family, optimum over families per budget")
    return fig


def _decides(res: A.Results, v: str) -> bool:
    """Whether variant v's entry makes a causal decision (its panel then names its loss)."""
    return bool(decides(res.runs.loc[res.runs.variant == v]).iloc[0])


def _envelope(an: Analysis, budget: float, v: str, metric: str):
    e = an.envelopes
    got = e[(e.budget == budget) & (e.variant == v) & (e.metric == metric)]
    return None if got.empty else got.iloc[0]


def _optimum_lines(an: Analysis, v: str, metric: str, colors: dict) -> list[str]:
    """One line per budget: the optimum over families with its intervals, or why there is none."""
    lines = []
    for budget in sorted(colors):
        e, tag = _envelope(an, budget, v, metric), budget_tag(budget)
        if e is None:
            continue
        if e.status == "ok":
            lines.append(f"{tag}: {e.best_family} {compact(e.opt_params)}{_pci(e.opt_params_ci)} params,"
                         f" loss {e.opt_loss:.3f}{_lci(e.opt_loss_ci)}")
        else:
            lines += _wrap(f"{tag}: no verdict: {e.reason}")
    return lines or ["no finished runs yet"]


def _draw_variant(ax, an: Analysis, v: str, metric: str, colors: dict, fams: dict) -> None:
    """Points, parabolas and optima of one variant, every budget."""
    col, se, run_col = COLUMNS[metric]
    runs, stars = an.results.runs, []
    for budget in sorted(colors):
        c = colors[budget]
        here = an.means[(an.means.budget == budget) & (an.means.variant == v)]
        seeds = runs[(runs.budget == budget) & (runs.variant == v) & runs.complete]
        ax.scatter(seeds.params, seeds[run_col], s=9, color=c, alpha=0.35, lw=0)
        fits = an.fits[(an.fits.budget == budget) & (an.fits.variant == v) & (an.fits.metric == metric)]
        for fam, (marker, ls) in fams.items():
            pts = here[here.family == fam].sort_values("params")
            if len(pts):
                ax.errorbar(pts.params, pts[col], yerr=pts[se], fmt=marker, color=c, ms=5.5, mec="k",
                            mew=0.4, capsize=2, lw=0.8)
            fit = fits[fits.family == fam]
            if len(fit):
                _draw_parabola(ax, fit.iloc[0], c, ls)
        e = _envelope(an, budget, v, metric)
        if e is not None and e.status == "ok":
            stars.append((e.opt_params, e.opt_loss))
            _draw_star(ax, e, c)
    if len(stars) > 1:
        xs, ys = zip(*stars)
        ax.plot(xs, ys, color="k", lw=1, alpha=0.6, zorder=4)


def _draw_parabola(ax, fit, color, ls) -> None:
    """A family's parabola over its grid (never out to an extrapolated minimum); thin and
    faint when the family has no verdict."""
    if fit.coeffs is None:
        return
    lo, hi = math.log10(fit.params_min), math.log10(fit.params_max)
    xs = np.linspace(lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo), 100)
    ok = fit.status == "ok"
    ax.plot(10 ** xs, np.polyval(fit.coeffs, xs), color=color, ls=ls, lw=1.5 if ok else 0.9,
            alpha=0.9 if ok else 0.45)


def _draw_star(ax, e, color) -> None:
    pci, lci = e.opt_params_ci, e.opt_loss_ci
    xerr = None if not pci else [[e.opt_params - pci[0]], [pci[1] - e.opt_params]]
    yerr = None if not lci else [[e.opt_loss - lci[0]], [lci[1] - e.opt_loss]]
    ax.errorbar([e.opt_params], [e.opt_loss], xerr=xerr, yerr=yerr, fmt="*", ms=15, color=color,
                mec="k", mew=0.7, ecolor="k", elinewidth=1.1, capsize=3, zorder=6)


def _pci(ci) -> str:
    return f" [{compact(ci[0])}, {compact(ci[1])}]" if ci else ""


def _lci(ci) -> str:
    return f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""


def _wrap(text: str, width: int = 80, lines: int = 3) -> list[str]:
    out = textwrap.wrap(text, width, subsequent_indent="  ")
    return out[:lines - 1] + [out[lines - 1] + " ..."] if len(out) > lines else out


def _legend(fig: Figure, colors: dict, fams: dict) -> None:
    budgets = [Line2D([], [], color=c, lw=3, label=f"{budget_tag(b)} FLOPs") for b, c in colors.items()]
    families = [Line2D([], [], color="0.3", marker=m, ls=ls, ms=5, label=f"family {f}")
                for f, (m, ls) in fams.items()]
    marks = [Line2D([], [], color="0.5", marker="*", ms=12, mec="k", ls="",
                    label="optimum over families\n(95% CI in params and loss)"),
             Line2D([], [], color="k", lw=1, alpha=0.6, label="optima joined across budgets"),
             Line2D([], [], color="0.5", lw=0.9, alpha=0.45, label="family without a verdict"),
             Line2D([], [], color="0.5", marker="o", ls="", ms=4, alpha=0.4, label="single seeds")]
    fig.legend(handles=budgets + families + marks, loc="outside right upper", fontsize=8)
