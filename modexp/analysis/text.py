"""Numbers as the tables, the verdict and the figures print them (no torch, no matplotlib)."""

from __future__ import annotations

import math

import pandas as pd

from modexp.naming import budget_tag


def compact(n: float) -> str:
    """1.23M-style count."""
    for div, suf in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.3g}{suf}"
    return f"{n:.3g}"


def fmt_cell(col: str, v) -> str:
    """A table value as text: compact params, 4-decimal losses, signed percentages."""
    if isinstance(v, str):
        return v
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    if col == "budget":
        return budget_tag(v)
    if col.endswith(" params"):
        return compact(v)
    if col.endswith(" %"):
        return f"{v:+.2f}%"
    if col.endswith(" fwd FLOPs"):
        return f"{v:.3f}x"
    if col.endswith(" n"):
        return str(int(v))
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def to_markdown(table: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table (no tabulate dependency)."""
    cols = list(table.columns)
    lines = ["| " + " | ".join(cols) + " |",
             "|" + "|".join("---" if c in ("model", "family", "note") else "---:" for c in cols) + "|"]
    for _, r in table.iterrows():
        lines.append("| " + " | ".join(fmt_cell(c, r[c]).replace("|", "\\|") for c in cols) + " |")
    return "\n".join(lines) + "\n"


def ci_text(ci, fmt: str = "{:.4f}") -> str:
    """' [lo, hi]' or ' (no interval)'."""
    return f" [{fmt.format(ci[0])}, {fmt.format(ci[1])}]" if ci else " (no interval)"


def params_ci_text(ci) -> str:
    """' [11.2k, 26.3k]' or ' (no interval)'."""
    return f" [{compact(ci[0])}, {compact(ci[1])}]" if ci else " (no interval)"
