"""`modexp plot`: loss vs FLOPs and vs training time, isoFLOP profiles, MoD routing, the
summary table (docs/figures.md describes every figure).

Figures use matplotlib's object API (Figure + the Agg canvas it picks by default), never
pyplot: no global backend switch for the caller and no figure registry to leak. Everything
is read from the files the trainer writes (results.py, isoflop.py); torch is never imported.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import pandas as pd

from modexp.analysis import results as A
from modexp.analysis import isoflop as I
from modexp.analysis import text as T
from modexp.analysis import verdict as V
from modexp.analysis.plot_curves import fig_loss_flops, fig_loss_time, has_time
from modexp.analysis.plot_isoflop import fig_isoflop
from modexp.analysis.plot_routing import fig_routing, fig_routing_heatmap
from modexp.analysis.plot_verdict import fig_equal_size, fig_frontier, has_equal_size, has_frontier
from modexp.analysis.plot_style import Style as _Style
from modexp.analysis.roles import decides
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
    figs = {"loss_vs_flops": fig_loss_flops(res, style), "isoflop": fig_isoflop(an, style.order)}
    if has_time(res):
        figs["loss_vs_time"] = fig_loss_time(res, style)
    verdict = V.verdict_dict(an)
    if has_frontier(verdict):
        figs["frontier"] = fig_frontier(res, verdict, style)
    if has_equal_size(verdict):
        figs["equal_size"] = fig_equal_size(res, verdict, style)
    if any(r in res.metrics for r in res.runs.loc[decides(res.runs), "run_id"]):
        figs["mod_routing"] = fig_routing(res, style)
        figs["routing_heatmap"] = fig_routing_heatmap(res)
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
