"""Rich tables for the terminal: the plan and the status of a sweep (no torch)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from modexp.memory import size
from modexp.naming import budget_tag
from modexp.plan import Plan


def _si(x: float) -> str:
    """3.1e12-style compact number."""
    return f"{x:.3g}" if abs(x) < 1e4 else f"{x:.2e}".replace("e+", "e")


def _int(n: int) -> str:
    """Integer with SI suffix: 1.2M, 853k."""
    for div, suf in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.3g}{suf}"
    return str(n)


def _micro(r) -> str:
    """The micro-batch a run's memory is estimated at: '8', 'auto', 'auto (4)' (auto's
    choice for the device planned for)."""
    if r.micro_batch_size == "auto":
        return f"auto ({r.micro_batch_auto})" if r.micro_batch_auto else "auto"
    return str(r.memory["micro_batch"]) if r.memory else str(r.micro_batch_size or "")


def plan_tables(plan: Plan) -> list[Table]:
    """One table per budget: every run's size, cost per step, matched steps and residual."""
    tables = []
    for budget in sorted({r.budget for r in plan.runs}):
        t = Table(title=f"budget {budget_tag(budget)} training FLOPs ({plan.runs[0].convention} convention)")
        for col in ("run id", "variant", "model", "params", "non-emb", "fwd FLOPs/tok",
                    "FLOPs/step", "steps", "tokens", "total FLOPs", "resid %", "fwd vs vanilla",
                    "micro-batch", "memory"):
            t.add_column(col, justify="left" if col in ("run id", "variant", "model") else "right")
        for r in (r for r in plan.runs if r.budget == budget):
            ratio = "" if r.fwd_ratio_vs_vanilla is None else f"{r.fwd_ratio_vs_vanilla:.3f}"
            t.add_row(r.run_id, r.variant, r.model, _int(r.params), _int(r.params_non_embedding),
                      _si(r.forward_flops_per_token), _si(r.flops_per_step), str(r.steps),
                      _int(r.tokens), _si(r.total_flops), f"{r.residual_pct:+.3f}", ratio,
                      _micro(r), size(r.memory["total"]) if r.memory else "")
        tables.append(t)
    return tables


def print_plan(plan: Plan, console: Console) -> None:
    """Print the plan tables (the caller prints the warnings, on stderr)."""
    for t in plan_tables(plan):
        console.print(t)
