"""A variant defined only in this file (issue 25.2): a MoD-like toy whose routed layers run a
fixed, strided set of positions (no router), registered in the variant registry for the test.
It plans, trains, evaluates, resumes after an interruption and is plotted through the real
`modexp run` / `modexp plot` library calls, without a line of modexp/ knowing it."""

from __future__ import annotations

import json
from typing import Literal

import pytest
import torch
from pydantic import Field

from modexp import flops, variants
from modexp.models.block import Block
from modexp.models.mod import RouteInfo
from modexp.plan import plan_file
from modexp.runs.metrics import read_json, read_metrics
from modexp.runs.runner import run_sweep
from modexp.variants import TREATMENT, Entry, VariantConfig

from conftest import StopAt


class StridedVariant(VariantConfig):
    """Every route_every-th block runs only the positions 0, s, 2s, ... (s = T // k)."""

    kind: Literal["strided"]
    capacity: float = Field(0.25, gt=0, le=1)
    route_every: int = Field(2, ge=1)

    def capacities(self, n_layers: int) -> list[float | None]:
        n = self.route_every
        return [self.capacity if i % n == n - 1 else None for i in range(n_layers)]

    def arch(self, model, vocab: int) -> flops.Arch:
        return flops.model_arch(model, vocab, capacities=tuple(self.capacities(model.n_layers)),
                                router=False)  # no router: its pattern is fixed


class StridedBlock(Block):
    """A Block run on the fixed positions only; every other token passes through."""

    def __init__(self, cfg, variant, capacity: float, layer: int, kernels):
        super().__init__(cfg, kernels)
        self.capacity = capacity

    def forward(self, x, pos, routing: str = "topk", cache=None):
        B, T, d = x.shape
        k = flops.routed_k(self.capacity, T)
        at = torch.arange(k, device=x.device) * (T // k)  # (k,)
        idx = at.expand(B, k)  # (B, k)
        out = x.clone()
        out[:, at] = x[:, at] + self.update(x[:, at], pos.gather(idx))
        n = torch.full((), idx.numel(), dtype=torch.long, device=x.device)
        return out, RouteInfo(idx, None, n, None, None, None, None)


TOY = Entry("strided", StridedVariant, TREATMENT, layer=StridedBlock, score="topk")


@pytest.fixture
def toy():
    with variants.registered(TOY):
        yield TOY


def test_a_variant_of_a_test_file_plans_trains_resumes_and_is_plotted(toy, write_spec, tmp_path):
    from modexp.analysis.plot import plot_results

    toy_variant = {"kind": "strided", "capacity": 0.25}
    spec = write_spec(budgets=[1e9], variants={"vanilla": {"kind": "vanilla"}, "strided": toy_variant})
    alone = write_spec(budgets=[1e9], variants={"strided": toy_variant}, name="alone.yaml")
    _, plan = plan_file(spec)
    runs = {r.variant: r for r in plan.runs}
    assert runs["strided"].entry == "strided" and runs["strided"].kind == "strided"
    assert runs["strided"].flops_per_step < runs["vanilla"].flops_per_step  # half its layers at 1/4
    with pytest.raises(KeyboardInterrupt):  # interrupted mid-run, then resumed
        run_sweep(spec, tmp_path / "a", progress=StopAt(6))
    run_sweep(spec, tmp_path / "a")
    run_sweep(alone, tmp_path / "b")  # straight through
    a, b = (tmp_path / d / "tiny" / runs["strided"].run_id for d in "ab")
    assert read_json(a / "summary.json")["state"] == "done"
    assert _same_rows(a, b)  # the resumed run computed what the straight one did
    evals = [r for r in read_metrics(a / "metrics.jsonl") if r["kind"] == "eval"]
    assert evals and all(r["routed_frac"] == [0.25] for r in evals)  # its pattern, as planned
    report = plot_results(tmp_path / "a" / "tiny")
    assert all(p.is_file() for p in report.figures) and report.figures
    fits = json.loads(report.verdict_json.read_text())["budgets"][0]["fits"]
    assert set(fits) == {"vanilla", "strided"}
    verdict = report.verdict["budgets"][0]["verdict"]
    assert "strided" in verdict["treatments"]  # its entry's role, compared with the baseline
    assert verdict["treatments"]["strided"]["metric"] == "topk"  # scored as its entry says


def _same_rows(a, b) -> bool:
    from test_train import _rows

    return _rows(a) == _rows(b)


def test_the_toy_is_gone_after_its_test():
    assert "strided" not in variants.kinds()
