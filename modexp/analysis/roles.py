"""Which part a variant plays in the verdict, and which of its eval losses scores it: both
asked of its registry entry (modexp/variants), found from a run's plan entry.

The verdict compares the baseline (a dense transformer) with each treatment (a MoD that
routes by a learned router) and each control (a MoD that routes at random: the paper's
stochastic-routing baseline, Raposo et al. 2024 fig. 3, and the gate-1 control). A variant
registered elsewhere (a test's toy) takes the role its entry declares.
"""

from __future__ import annotations


import pandas as pd

from modexp import variants
from modexp.variants import BASELINE, CONTROL, TREATMENT  # noqa: F401 (the analysis's names)


def _text(v) -> str | None:
    return v if isinstance(v, str) else None


def entry(kind: str, router: str | None = None, name: str | None = None) -> variants.Entry:
    """The registry entry of a run: its recorded entry name, else (plan files from before the
    registry) the built-in its kind and router name."""
    return variants.of_run({"kind": kind, "router": _text(router), "entry": _text(name)})


def role(kind: str, router: str | None = None, name: str | None = None) -> str:
    """baseline (vanilla), treatment (learned MoD), control (random routing), or the role
    another registered variant's entry declares."""
    return entry(kind, router, name).role


def verdict_metric(kind: str, router: str | None = None, name: str | None = None) -> str:
    """The eval loss that scores a variant (its entry's `score`): a MoD's causal loss (top-k
    routing sees later tokens, so its loss is not what sampling gets), a dense model's only
    eval loss ("topk")."""
    return entry(kind, router, name).score


def _row_entry(r) -> variants.Entry:
    return entry(r.kind, getattr(r, "router", None), getattr(r, "entry", None))


def roles(runs: pd.DataFrame) -> dict[str, str]:
    """variant -> role, in plan order."""
    return {r.variant: _row_entry(r).role for r in runs.drop_duplicates("variant").itertuples()}


def scores(runs: pd.DataFrame) -> dict[str, str]:
    """variant -> the eval loss that scores it ("topk" or "causal"), in plan order."""
    return {r.variant: _row_entry(r).score for r in runs.drop_duplicates("variant").itertuples()}


def variant_order(runs: pd.DataFrame) -> tuple[list[str], list[str], list[str]]:
    """(all variants in plan order, the baselines, the others)."""
    order = list(dict.fromkeys(runs["variant"]))
    R = roles(runs)
    return order, [v for v in order if R[v] == BASELINE], [v for v in order if R[v] != BASELINE]


def decides_of(kind: str, router: str | None = None, name: str | None = None) -> bool:
    """Whether a run's entry makes a causal decision (variants.Entry.decides); False for a
    kind no entry has (a variant registered only where the run was trained)."""
    try:
        return entry(kind, router, name).decides
    except KeyError:
        return False


def decides(runs: pd.DataFrame) -> pd.Series:
    """Per run (bool, runs' index): whether its entry makes a causal decision (the routing
    figures' runs)."""
    return pd.Series([decides_of(r.kind, getattr(r, "router", None), getattr(r, "entry", None))
                      for r in runs.itertuples()], index=runs.index, dtype=bool)
