"""`modexp plot`: loss-vs-FLOPs curves, isoFLOP profiles, MoD routing, and the summary table.

Figures use matplotlib's object API (Figure + the Agg canvas it picks by default), never
pyplot: no global backend switch for the caller and no figure registry to leak. Everything
is read from the files the trainer writes (results.py, isoflop.py); torch is never imported.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from modexp.analysis import results as A
from modexp.analysis import isoflop as I
from modexp.analysis import text as T
from modexp.analysis import verdict as V
from modexp.analysis.plot_isoflop import fig_isoflop
from modexp.analysis.plot_verdict import fig_equal_size, fig_frontier, has_equal_size, has_frontier
from modexp.analysis.plot_style import Style as _Style
from modexp.analysis.plot_style import figure as _figure
from modexp.analysis.plot_style import header as _header
from modexp.analysis.plot_style import log_x as _log_x
from modexp.analysis.plot_style import sci as _sci
from modexp.analysis.verdict_text import verdict_markdown
from modexp.naming import budget_tag
from modexp.spec import SpecError

if TYPE_CHECKING:
    from rich.console import Console

FORMATS = ("png", "svg", "pdf")
PLOTS_DIR = "plots"


@dataclass
class PlotReport:
    """What `plot_results` wrote and what the reader should know about the data."""

    figures: list[Path]
    table: pd.DataFrame
    csv: Path
    markdown: Path
    missing: list[str]  # planned run ids with no finished or partial metrics
    warnings: list[str]  # edge-of-grid, too few sizes, failed runs, ...
    verdict: dict  # verdict.verdict_dict: fits, per-budget verdicts, frontier
    verdict_json: Path


def plot_results(results_dir: str | Path, formats: Sequence[str] = ("png",)) -> PlotReport:
    """Write every figure and the summary table to <results_dir>/plots/; SpecError on bad input."""
    fmts = _check_formats(formats)
    an = I.analyze(results_dir)  # raises before anything is written
    res, means, fits, table, warnings = an.results, an.means, an.fits, an.table, an.warnings
    A.require_finished(res)
    out = res.root / PLOTS_DIR
    out.mkdir(exist_ok=True)
    style = _Style(res.runs)
    figs = {"loss_vs_flops": _fig_loss(res, style), "isoflop": fig_isoflop(an, style.order)}
    verdict = V.verdict_dict(an)
    if has_frontier(verdict):
        figs["frontier"] = fig_frontier(res, verdict, style)
    if has_equal_size(verdict):
        figs["equal_size"] = fig_equal_size(res, verdict, style)
    if any(r in res.metrics for r in res.runs.loc[res.runs.kind == "mod", "run_id"]):
        figs["mod_routing"] = _fig_routing(res, style)
    paths = [out / f"{name}.{fmt}" for name in figs for fmt in fmts]
    for path in paths:
        figs[path.stem].savefig(path, dpi=130, bbox_inches="tight")
    csv, md = out / "summary.csv", out / "summary.md"
    table.to_csv(csv, index=False)
    md.write_text(_markdown(res, table, warnings) + verdict_markdown(verdict))
    vj = out / "verdict.json"
    vj.write_text(json.dumps(verdict, indent=2) + "\n")
    return PlotReport(paths, table, csv, md, res.missing, warnings, verdict, vj)


def _check_formats(formats: Sequence[str]) -> list[str]:
    fmts = [f.strip().lower().lstrip(".") for f in formats if f.strip()]
    bad = [f for f in fmts if f not in FORMATS]
    if bad or not fmts:
        raise SpecError("--format", [f"unsupported format {f!r}; allowed: {', '.join(FORMATS)}"
                                     for f in bad] or ["no format given; allowed: png, svg, pdf"])
    return list(dict.fromkeys(fmts))


def _markdown(res: A.Results, table: pd.DataFrame, warnings: list[str]) -> str:
    text = (f"# {res.experiment}: final eval loss\n\nMean over seeds (n = seeds); 'isoFLOP optimum' "
            "rows: the lowest parabola minimum over shape families (family: the one chosen; n = its "
            "sizes). 'X vs Y %' < 0: X has the lower top-k loss (the verdict below scores MoD's "
            "causal loss). 'X/Y fwd FLOPs': forward FLOPs per token of X over Y, same size.\n\n")
    text += T.to_markdown(table)
    if warnings:
        text += "\n## Warnings\n\n" + "".join(f"- {w}\n" for w in warnings)
    if res.missing:
        text += "\n## Missing runs (no metrics yet)\n\n" + "".join(f"- {r}\n" for r in res.missing)
    return text


# ---------------------------------------------------------------- 1. loss vs FLOPs (and steps)


def _smooth(y: pd.Series) -> pd.Series:
    """Centred rolling mean: no lag, so the smoothed curve ends where the run ended."""
    return y.rolling(max(1, len(y) // 15), center=True, min_periods=1).mean()


def _train_loss(rows: pd.DataFrame) -> pd.Series:
    """LM loss (comparable across variants); train_loss adds MoD's aux/predictor terms."""
    lm = rows["lm_loss"] if "lm_loss" in rows else pd.Series(dtype=float)
    return lm if lm.notna().any() else rows.get("train_loss", pd.Series(dtype=float))


def _fig_loss(res: A.Results, style: _Style) -> Figure:
    budgets = sorted(res.runs.budget.unique())
    fig, axes = _figure(len(budgets), 2, 13, 4.0)
    for (ax_f, ax_s), budget in zip(axes, budgets):
        pts = [_draw_run(ax_f, ax_s, res, r, style.color(r.variant, r.model)) for r in
               res.runs[(res.runs.budget == budget) & res.runs.run_id.isin(list(res.metrics))].itertuples()]
        _zoom(ax_f, ax_s, pd.concat(pts) if pts else pd.DataFrame())
        ax_f.axvline(budget, color="0.4", ls=":", lw=1)
        tag = budget_tag(budget)
        _log_x(ax_f, _sci)
        _log_x(ax_s, T.compact)
        ax_f.set(xlabel="cumulative training FLOPs", ylabel="loss (nats/token)",
                 title=f"budget {tag} FLOPs: loss vs training FLOPs")
        ax_s.set(xlabel="optimizer steps", ylabel="loss (nats/token)",
                 title=f"{tag} FLOPs: same runs vs steps (not FLOP-matched)")
        for ax in (ax_f, ax_s):
            ax.grid(True, which="both", alpha=0.25)
    kinds = [Line2D([], [], color="k", lw=1.6, label="train LM loss (smoothed; raw faint)"),
             Line2D([], [], color="k", ls="--", lw=1, marker="o", ms=4, label="eval loss"),
             Line2D([], [], color="0.4", ls=":", lw=1, label="FLOP budget")]
    fig.legend(handles=style.variant_handles() + style.size_handles() + kinds, loc="outside right upper",
               fontsize=8, title="colour: variant, shade: size", title_fontsize=8)
    _header(fig, res, "loss vs training FLOPs (left) and vs steps (right)")
    return fig


def _zoom(ax_f, ax_s, pts: pd.DataFrame) -> None:
    """Frame the end of training, where runs are told apart: y up to the 92nd percentile of
    the smoothed losses, x from where the first curve enters that range."""
    if pts.empty or pts["y"].isna().all():
        return
    lo, hi = pts["y"].min(), pts["y"].quantile(0.92)
    pad, inside = 0.06 * (hi - lo or 1), pts[pts["y"] <= hi]
    for ax, x in ((ax_f, "flops"), (ax_s, "step")):
        ax.set_ylim(lo - pad, hi + pad)
        ax.set_xlim(left=inside[x].min() / 1.3)


def _draw_run(ax_f, ax_s, res: A.Results, r, color) -> pd.DataFrame:
    """One run on both panels; returns its (flops, step, y) points that frame the axes."""
    tr, ev = res.rows(r.run_id, "train"), res.rows(r.run_id, "eval")
    y = _train_loss(tr) if len(tr) else pd.Series(dtype=float)
    sm = _smooth(y) if len(y) else y
    for ax, x in ((ax_f, "flops"), (ax_s, "step")):
        if len(y):
            ax.plot(tr[x], y, color=color, alpha=0.2, lw=0.8)
            ax.plot(tr[x], sm, color=color, lw=1.8)
        if len(ev):
            ax.plot(ev[x], ev["eval_loss"], color=color, ls="--", lw=1, marker="o", ms=4, mec="k", mew=0.4)
    pts = [pd.DataFrame({"flops": tr["flops"], "step": tr["step"], "y": sm})] if len(y) else []
    if len(ev):
        pts.append(pd.DataFrame({"flops": ev["flops"], "step": ev["step"], "y": ev["eval_loss"]}))
    return pd.concat(pts) if pts else pd.DataFrame(columns=["flops", "step", "y"])


# ---------------------------------------------------------------- 3. MoD routing


def _fig_routing(res: A.Results, style: _Style) -> Figure:
    mod = res.runs[(res.runs.kind == "mod") & res.runs.run_id.isin(list(res.metrics))]
    budgets = sorted(mod.budget.unique())
    fig, axes = _figure(len(budgets), 3, 16, 3.9)
    for (ax_l, ax_a, ax_r), budget in zip(axes, budgets):
        for r in mod[mod.budget == budget].itertuples():
            c, ev = style.color(r.variant, r.model), res.rows(r.run_id, "eval")
            if len(ev):
                ax_l.plot(ev.flops, ev.eval_loss, color=c, marker="o", ms=3)
                if "eval_loss_causal" in ev and ev.eval_loss_causal.notna().any():
                    ax_l.plot(ev.flops, ev.eval_loss_causal, color=c, ls="--", marker="s", ms=3)
                _draw_predictor(ax_a, ev, r, c)
            _draw_layers(ax_r, res, r, c)
        tag = budget_tag(budget)
        _log_x(ax_l, _sci)
        _log_x(ax_a, _sci)
        ax_l.set(xlabel="cumulative training FLOPs", ylabel="eval loss (nats/token)",
                 title=f"{tag} FLOPs: top-k vs causal routing at eval")
        ax_a.set(xlabel="cumulative training FLOPs", ylabel="agreement with top-k (fraction)",
                 title=f"{tag} FLOPs: causal predictor vs top-k", ylim=(-0.03, 1.03))
        ax_r.set(xlabel="layer index", ylabel="fraction of tokens routed through the block",
                 title=f"{tag} FLOPs: routed fraction per layer (final)")
        for ax in (ax_l, ax_a, ax_r):
            ax.grid(True, alpha=0.25)
    pairs = mod.drop_duplicates(["variant", "model"]).sort_values(["variant", "params"])
    runs = [Line2D([], [], color=style.color(r.variant, r.model), lw=3, label=f"{r.variant} / {r.model}")
            for r in pairs.itertuples()]
    kinds = [Line2D([], [], color="k", marker="o", ms=4, label="top-k routing (eval)"),
             Line2D([], [], color="k", ls="--", marker="s", ms=4, label="causal routing (eval)"),
             Line2D([], [], color="k", marker="o", ms=4, label="predictor accuracy"),
             Line2D([], [], color="k", ls=":", marker="v", ms=4, label="predictor recall (routed caught)"),
             Line2D([], [], color="k", ls="--", marker="^", ms=4, label="recall on the causal pass"),
             Line2D([], [], color="0.5", ls="-.", label="accuracy of never routing"),
             Line2D([], [], color="k", ls=":", marker="x", ms=6, label="top-k, training (last 10%)"),
             Line2D([], [], color="k", ls="", marker="_", ms=14, mew=2, label="capacity (planned)")]
    fig.legend(handles=runs + kinds, loc="outside right upper", fontsize=8)
    _header(fig, res, "Mixture-of-Depths routing")
    return fig


def _draw_predictor(ax, ev: pd.DataFrame, r, color) -> None:
    """Accuracy alone hides a predictor that never routes (it scores 1 - capacity), so recall
    and that trivial baseline are drawn with it."""
    if "predictor_acc" not in ev or ev.predictor_acc.isna().all():
        return
    ax.plot(ev.flops, ev.predictor_acc, color=color, marker="o", ms=3)
    if "predictor_recall" in ev:
        ax.plot(ev.flops, ev.predictor_recall, color=color, ls=":", marker="v", ms=3)
    if "predictor_recall_causal" in ev and not ev.predictor_recall_causal.isna().all():
        # On the causal pass earlier layers route by their own decisions, so later predictors
        # see inputs they were not trained on: recall there is what sampling gets.
        ax.plot(ev.flops, ev.predictor_recall_causal, color=color, ls="--", marker="^", ms=3)
    caps = [c for c in (r.capacities if isinstance(r.capacities, list) else []) if c is not None]
    if caps:
        ax.axhline(1 - float(np.mean(caps)), color="0.5", ls="-.", lw=1)


def _last_list(rows: pd.DataFrame, key: str, share: float = 0.0) -> list[float] | None:
    """A per-layer list at the end of training: the last row's, or the mean over the last
    `share` of rows (train rows are noisy; eval rows are few)."""
    lists = [v for v in rows.get(key, []) if isinstance(v, list) and v and None not in v]
    if not lists:
        return None
    keep = [k for k in lists[-max(1, math.ceil(len(lists) * share)):] if len(k) == len(lists[-1])]
    return list(np.mean(keep, axis=0))


def _draw_layers(ax, res: A.Results, r, color) -> None:
    caps = r.capacities if isinstance(r.capacities, list) else []
    routed = [i for i, c in enumerate(caps) if c is not None]
    causal = _last_list(res.rows(r.run_id, "eval"), "routed_frac_causal")
    train = _last_list(res.rows(r.run_id, "train"), "routed_frac", share=0.1)
    for vals, ls, mk in ((causal, "--", "s"), (train, ":", "x")):
        if vals:
            xs = routed if len(routed) == len(vals) else list(range(len(vals)))
            ax.plot(xs, vals, color=color, ls=ls, marker=mk, ms=5)
    if routed:
        ax.plot(routed, [caps[i] for i in routed], ls="", marker="_", ms=14, mew=2, color="k")
        ax.set_xticks(routed)
    ax.set_ylim(bottom=0)  # from zero, so a small shortfall looks small


# ---------------------------------------------------------------- terminal report


def print_report(report: PlotReport, console: "Console") -> None:
    """Print the summary table (one per budget), warnings, missing runs and the files written."""
    from rich.table import Table

    t = report.table
    cols = [c for c in t.columns if c != "budget"]
    for budget in t["budget"].unique():
        table = Table(title=f"budget {budget_tag(budget)} training FLOPs: final eval loss (mean over n "
                            "seeds; optimum: parabola fit over n sizes; vs % < 0: MoD lower)")
        for c in cols:
            table.add_column(c, justify="left" if c in ("model", "note") else "right",
                             overflow="fold")
        for _, row in t[t["budget"] == budget].iterrows():
            opt = row["model"] == "isoFLOP optimum"
            table.add_row(*(T.fmt_cell(c, row[c]) for c in cols), style="bold" if opt else None,
                          end_section=False)
        console.print(table)
    console.print(verdict_markdown(report.verdict), highlight=False, markup=False)
    for w in report.warnings:
        console.print(f"[yellow]warning:[/] {w}", highlight=False)
    if report.missing:
        console.print(f"[yellow]missing ({len(report.missing)}):[/] {', '.join(report.missing)}",
                      highlight=False)
    for p in [*report.figures, report.csv, report.markdown, report.verdict_json]:
        console.print(f"wrote {p}", highlight=False)
