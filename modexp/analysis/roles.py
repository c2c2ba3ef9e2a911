"""Which part a variant plays in the verdict, and which of its eval losses scores it.

The verdict compares the baseline (a dense transformer) with each treatment (a MoD that
routes by a learned router) and each control (a MoD that routes at random: the paper's
stochastic-routing baseline, Raposo et al. 2024 fig. 3). `role` is the one place that
decides which is which, from a plan entry's kind and router, so a variant registry can take
its place by changing that one function.
"""

from __future__ import annotations

import pandas as pd

BASELINE, TREATMENT, CONTROL = "baseline", "treatment", "control"


def role(kind: str, router: str | None) -> str:
    """baseline (vanilla), treatment (learned MoD) or control (random-routing MoD)."""
    if kind == "vanilla":
        return BASELINE
    return CONTROL if router == "random" else TREATMENT


def verdict_metric(kind: str) -> str:
    """The eval loss that scores a variant: a MoD's causal loss (top-k routing sees later
    tokens, so its loss is not what sampling gets), a dense model's only eval loss ("topk")."""
    return "causal" if kind == "mod" else "topk"


def roles(runs: pd.DataFrame) -> dict[str, str]:
    """variant -> role, in plan order."""
    first = runs.drop_duplicates("variant")
    return {r.variant: role(r.kind, r.router if isinstance(r.router, str) else None)
            for r in first.itertuples()}


def variant_order(runs: pd.DataFrame) -> tuple[list[str], list[str], list[str]]:
    """(all variants in plan order, the vanilla ones, the MoD ones)."""
    order = list(dict.fromkeys(runs["variant"]))
    kinds = dict(zip(runs["variant"], runs["kind"]))
    return order, [v for v in order if kinds[v] == "vanilla"], [v for v in order if kinds[v] == "mod"]
