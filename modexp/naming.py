"""Names of budgets and runs: the budget tag and the run id `<budget>-<model>-<variant>-s<seed>`.

A module of its own at the bottom of the package: the planner names runs with it, and the
analysis, tables and figures label budgets with it, without importing the planner.
"""

from __future__ import annotations


def budget_tag(budget: float) -> str:
    """Readable, stable budget label for run ids: 3e12, 1.5e12, 6e18."""
    mant, exp = f"{budget:.6e}".split("e")
    return f"{float(mant):g}e{int(exp)}"


def run_id(budget: float, model: str, variant: str, seed: int) -> str:
    """Stable run id: <budget>-<model>-<variant>-s<seed>."""
    return f"{budget_tag(budget)}-{model}-{variant}-s{seed}"
