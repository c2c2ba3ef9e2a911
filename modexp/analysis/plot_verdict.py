"""Figures of the verdict (verdict.verdict_dict): the compute-optimal frontier with interval
bands and the compute-equivalent gain, and variant minus baseline at equal size."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from modexp.analysis import results as A
from modexp.analysis.plot_style import Style, family_styles, figure, header, log_x, sci
from modexp.analysis.text import compact
from modexp.naming import budget_tag


def _yerr(vals, cis) -> list | None:
    if any(ci is None for ci in cis):
        return None
    return [[v - ci[0] for v, ci in zip(vals, cis)], [ci[1] - v for v, ci in zip(vals, cis)]]


def fig_frontier(res: A.Results, verdict: dict, style: Style) -> Figure:
    """N_opt(C) with its power law and 95% band, L_opt(C) per budget (no law: frontier.py),
    and each variant's compute-equivalent gain over the baseline per budget."""
    fig, ((ax_n, ax_l, ax_g),) = figure(1, 3, 16.5, 4.6)
    for v, f in verdict["frontier"].items():
        if f["status"] != "ok":
            continue
        c, C = style.base(v), np.asarray(f["budgets"])
        ax_n.errorbar(C, f["opt_params"], yerr=_yerr(f["opt_params"], f["opt_params_ci"]), fmt="*",
                      ms=11, color=c, mec="k", mew=0.5, capsize=3, ecolor=c)
        law, band = f["params"], f["params"]["band"]
        cs = np.geomspace(C.min(), C.max(), 50)
        ci = law["exponent_ci"]
        ax_n.plot(cs, law["coef"] * cs ** law["exponent"], color=c, lw=1.5,
                  label=f"{v}: a = {law['exponent']:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")
                  + f" ({f['n_budgets']} budgets)")
        if band:
            ax_n.fill_between(band["flops"], band["lo"], band["hi"], color=c, alpha=0.18, lw=0)
        ax_l.errorbar(C, f["opt_loss"], yerr=_yerr(f["opt_loss"], f["opt_loss_ci"]), fmt="*-", ms=11,
                      color=c, mec="k", mew=0.5, capsize=3, lw=1.2,
                      label=f"{v} ({'causal' if f['metric'] == 'causal' else 'eval'} loss)")
    _draw_gains(ax_g, verdict, style)
    log_x(ax_n, sci)
    log_x(ax_l, sci)
    ax_n.set_yscale("log")
    for axis in (ax_n.yaxis.set_major_formatter, ax_n.yaxis.set_minor_formatter):
        axis(lambda v, _: compact(v))
    ax_n.set(xlabel="training FLOPs C", ylabel="compute-optimal params N_opt",
             title="N_opt(C) = A C^a (band: 95% of refitted laws)")
    ax_l.set(xlabel="training FLOPs C", ylabel="loss at the optimum L_opt (nats/token)",
             title="L_opt per budget (95% CI; no law fitted)")
    for ax in (ax_n, ax_l):
        ax.grid(True, which="both", alpha=0.25)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    header(fig, res, "compute-optimal frontier (interior optima over families only)")
    return fig


def _draw_gains(ax, verdict: dict, style: Style) -> None:
    """Gain per budget with its interval; the reason where a budget has none."""
    notes, any_ok = [], False
    for b in verdict["budgets"]:
        C, vd = b["budget"], b["verdict"]
        named = {**{t: r["gain"] for t, r in vd["treatments"].items()},
                 **{c: r["gain"] for c, r in vd["controls"].items()}}
        for v, g in named.items():
            if g is None:
                continue
            if g["status"] != "ok":
                notes.append(f"{budget_tag(C)} {v}: no verdict")
                continue
            any_ok = True
            ci = g["gain_ci"]
            yerr = None if not ci else [[g["gain"] - ci[0]], [ci[1] - g["gain"]]]
            ax.errorbar([C], [g["gain"]], yerr=yerr, fmt="o", ms=8, color=style.base(v), mec="k",
                        mew=0.5, capsize=4, ecolor=style.base(v))
            ax.annotate(f"{g['gain']:.2f}x", (C, g["gain"]), xytext=(6, 4), textcoords="offset points",
                        fontsize=8)
    ax.axhline(1, color="0.4", ls=":", lw=1)
    if any_ok:
        ax.set_yscale("log")
        for axis in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
            axis(lambda v, _: f"{v:.3g}x")
    budgets = [b["budget"] for b in verdict["budgets"]]
    ax.set_xlim(min(budgets) / 1.3, max(budgets) * 1.3)  # every measured budget, gain or not
    log_x(ax, sci)
    ax.set(xlabel="training FLOPs C of the variant", ylabel="baseline compute to reach its loss / C",
           title="compute-equivalent gain (95% CI; > 1: worth more compute)")
    handles = [Line2D([], [], color=style.base(v), marker="o", ls="", ms=7, label=v)
               for v in dict.fromkeys(v for b in verdict["budgets"]
                                      for v in {**b["verdict"]["treatments"], **b["verdict"]["controls"]})]
    if handles:
        ax.legend(handles=handles, fontsize=8, loc="upper left")
    if notes:
        ax.text(0.99, 0.02, "\n".join(notes[:8]) + ("\n..." if len(notes) > 8 else "")
                + "\n(reasons: verdict text)", transform=ax.transAxes, ha="right", va="bottom",
                fontsize=7.5, color="darkred", bbox=dict(fc="white", ec="darkred", alpha=0.85))
    ax.grid(True, which="both", alpha=0.25)


def fig_equal_size(res: A.Results, verdict: dict, style: Style) -> Figure:
    """Per budget: each variant minus the baseline at the same model, with 95% intervals."""
    budgets = [b for b in verdict["budgets"] if any(r["delta_loss"] is not None for r in b["equal_size"])]
    fig, axes = figure(1, max(len(budgets), 1), max(5.4 * len(budgets), 7.5) + 2, 4.6)
    fams = family_styles(res.runs)
    for ax, b in zip(axes[0], budgets):
        rows = [r for r in b["equal_size"] if r["delta_loss"] is not None]
        for v in dict.fromkeys(r["variant"] for r in rows):
            for fam, (marker, ls) in fams.items():
                pts = sorted((r for r in rows if r["variant"] == v and r["family"] == fam),
                             key=lambda r: r["params"])
                if not pts:
                    continue
                yerr = _yerr([r["delta_loss"] for r in pts], [r["delta_loss_ci"] for r in pts])
                ax.errorbar([r["params"] for r in pts], [r["delta_loss"] for r in pts], yerr=yerr,
                            fmt=marker, ls=ls, color=style.base(v), ms=6, mec="k", mew=0.4, capsize=3, lw=1)
        ax.axhline(0, color="0.3", lw=1)
        log_x(ax, compact)
        ax.set(xlabel="parameters (log scale)", ylabel="loss difference at equal size (nats/token)")
        ax.set_title(f"{budget_tag(b['budget'])} FLOPs: variant - vanilla, same model\n"
                     + _verdict_line(b["verdict"]), fontsize=9.5)
        ax.grid(True, which="both", alpha=0.25)
    variants = dict.fromkeys(r["variant"] for b in budgets for r in b["equal_size"])
    handles = [Line2D([], [], color=style.base(v), lw=3, label=f"{v} - vanilla") for v in variants]
    drawn = {r["family"] for b in budgets for r in b["equal_size"] if r["delta_loss"] is not None}
    handles += [Line2D([], [], color="0.3", marker=m, ls=ls, label=f"family {f}")
                for f, (m, ls) in fams.items() if f in drawn]
    axes[0][0].legend(handles=handles, loc="best", fontsize=8, title="bars: 95% CI (>= 2 seeds)",
                      title_fontsize=8, framealpha=0.85)
    header(fig, res, "variant - vanilla at EQUAL size\n(not the verdict: each size took its own step "
                     "count at this budget; the verdict compares optima)")
    return fig


def _verdict_line(vd: dict) -> str:
    if vd["status"] != "ok":
        return "verdict at the optima: no verdict"
    d = vd["mod_vs_vanilla"]
    ci = d["delta_loss_ci"]
    return (f"verdict at the optima (MoD - vanilla): {d['delta_loss']:+.3f}"
            + (f" [{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else ""))


def has_equal_size(verdict: dict) -> bool:
    """Drawn where some size has an interval (>= 2 seeds); one seed's differences are the
    summary table's 'vs %' columns already."""
    return any(r["delta_loss_ci"] is not None for b in verdict["budgets"] for r in b["equal_size"])


def has_frontier(verdict: dict) -> bool:
    gains = (r.get("gain") for b in verdict["budgets"]
             for r in {**b["verdict"]["treatments"], **b["verdict"]["controls"]}.values())
    return any(f["status"] == "ok" for f in verdict["frontier"].values()) or any(
        g is not None and g["status"] == "ok" for g in gains)
