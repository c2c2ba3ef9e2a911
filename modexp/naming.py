"""Names of budgets and runs: the budget tag and the run id `<budget>-<model>-<variant>-s<seed>`.

A module of its own at the bottom of the package: the planner names runs with it, and the
analysis, tables and figures label budgets with it, without importing the planner.
"""

from __future__ import annotations


def budget_tag(budget: float) -> str:
    """Readable, stable budget label for run ids: 3e12, 1.5e12, 6e18.

    Six significant digits where they give the budget back exactly (every budget of up to six
    digits keeps the tag it always had), else the shortest mantissa that does (2.0000001e8):
    every tag parses back to its own budget, so distinct budgets never share a run id.
    """
    mant, exp = f"{budget:.6e}".split("e")
    tag = f"{float(mant):g}e{int(exp)}"
    digits = 7
    while float(tag) != budget and digits <= 17:  # 17 significant digits round-trip any float
        mant, exp = f"{budget:.{digits - 1}e}".split("e")
        tag = f"{mant.rstrip('0').rstrip('.')}e{int(exp)}"
        digits += 1
    return tag


def run_id(budget: float, model: str, variant: str, seed: int) -> str:
    """Stable run id: <budget>-<model>-<variant>-s<seed>."""
    return f"{budget_tag(budget)}-{model}-{variant}-s{seed}"
