"""Shared figure style for `modexp plot`: colours per variant, shades per size, log axes,
titles and the run-status caption (matplotlib's object API, never pyplot)."""

from __future__ import annotations

import math

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter

from modexp.analysis import results as A
from modexp.analysis.isoflop import family_order
from modexp.analysis.roles import variant_order
from modexp.analysis.text import compact
from modexp.naming import budget_tag

CMAPS = ("Blues", "Oranges", "Greens", "Purples", "Reds", "Greys")  # one hue per variant
MARKERS = ("o", "s", "^", "D", "v", "P", "X")  # one per shape family
LINES = ("-", "--", "-.", ":")


def budget_colors(budgets) -> dict:
    """Budget -> colour, light to dark as the budget grows (viridis; one budget: a mid shade)."""
    cmap, bs = mpl.colormaps["viridis"], sorted(budgets)
    span = max(len(bs) - 1, 1)
    return {b: cmap(0.85 - 0.75 * i / span) if len(bs) > 1 else cmap(0.4) for i, b in enumerate(bs)}


def family_styles(runs: pd.DataFrame) -> dict:
    """Family -> (marker, line style), in family order, the same in every figure."""
    return {f: (MARKERS[i % len(MARKERS)], LINES[i % len(LINES)]) for i, f in enumerate(family_order(runs))}


class Style:
    """Colour = variant (one colormap each), shade = model size (darker = larger)."""

    def __init__(self, runs: pd.DataFrame):
        order, _, _ = variant_order(runs)
        self.kinds = dict(zip(runs.variant, runs.kind))
        self.cmaps = {v: mpl.colormaps[CMAPS[i % len(CMAPS)]] for i, v in enumerate(order)}
        sizes = list(runs.groupby("model", sort=False)["params"].min().sort_values().index)
        self.shade = {m: 0.45 + 0.5 * (i / max(len(sizes) - 1, 1)) for i, m in enumerate(sizes)}
        self.params = runs.groupby("model")["params"].min().to_dict()
        self.order, self.sizes = order, sizes

    def color(self, variant: str, model: str):
        return self.cmaps[variant](self.shade[model])

    def base(self, variant: str):
        return self.cmaps[variant](0.75)

    def variant_handles(self) -> list:
        label = {v: v if v == k else f"{v} ({k})" for v, k in self.kinds.items()}
        return [Line2D([], [], color=self.base(v), lw=3, label=label[v]) for v in self.order]

    def size_handles(self) -> list:
        grey = mpl.colormaps["Greys"]
        return [Line2D([], [], color=grey(self.shade[m]), lw=3,
                       label=f"{m} ({compact(self.params[m])} params)") for m in self.sizes]


def figure(nrows: int, ncols: int, width: float, height: float) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(width, height * nrows + 0.7), layout="constrained")
    return fig, fig.subplots(nrows, ncols, squeeze=False)


def log_x(ax, fmt) -> None:
    """Log x-axis with plain-text tick labels (fmt: value -> text), minors at 2 and 5 when
    the axis spans under two decades; cheaper to render than mathtext and easier to read."""
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: fmt(v)))

    def minor(v, _):
        lo, hi = ax.get_xlim()
        mant = round(v / 10 ** math.floor(math.log10(v)), 6)
        return fmt(v) if hi / lo < 100 and mant in (2, 5) else ""

    ax.xaxis.set_minor_formatter(FuncFormatter(minor))


def sci(v: float) -> str:
    return budget_tag(v) if v >= 1e4 else f"{v:g}"


def status_line(res: A.Results) -> str:
    """Partial-results caption: how many runs are plotted, partial, failed or missing."""
    counts = res.runs["state"].value_counts()
    parts = [f"{counts.get(s, 0)} {s}" for s in ("done", "partial", "failed", "missing") if counts.get(s, 0)]
    line = f"{len(res.runs)} planned runs: " + ", ".join(parts)
    if counts.get("partial", 0):
        line += "; partial runs are plotted but left out of fits and the table"
    if res.missing:
        line += f"; missing: {', '.join(res.missing[:3])}" + (" ..." if len(res.missing) > 3 else "")
    return line


def header(fig: Figure, res: A.Results, what: str) -> None:
    """Title on top, run-status caption at the bottom (partial sweeps say so on the figure)."""
    fig.suptitle(f"{res.experiment}: {what}", fontsize=12)
    fig.supxlabel(status_line(res), fontsize=8, color="0.35")
