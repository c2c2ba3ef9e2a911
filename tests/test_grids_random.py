"""Per-budget grids, per-size lr/batch, and the random-routing control (issue 11)."""

import json

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode
from typer.testing import CliRunner

from modexp import flops
from modexp.cli import app
from modexp.models.build import build_model
from modexp.plan import build_plan
from modexp.runs.metrics import read_json
from modexp.runs.runner import run_sweep
from modexp.spec import ModelConfig, ModVariant, SpecError, parse_spec, spec_to_dict

from conftest import TINY

MODELS = [{"name": n, "n_layers": 2, "d_model": d, "n_heads": 2} for n, d in (("a", 16), ("b", 32), ("c", 48))]
RANDOM = {"kind": "mod", "capacity": 0.25, "router": "random"}


def grid_spec(**kw) -> dict:
    return {**TINY, "models": MODELS, **kw}


def problems(raw: dict) -> list[str]:
    with pytest.raises(SpecError) as e:
        parse_spec(raw)
    return e.value.problems


def test_per_budget_grid_plans_only_its_models():
    spec = parse_spec(grid_spec(budgets=[2e9, {"flops": 6e9, "models": ["b", "c"]}]))
    plan = build_plan(spec)
    sizes = {b: sorted({r.model for r in plan.runs if r.budget == b}) for b in (2e9, 6e9)}
    assert sizes == {2e9: ["a", "b", "c"], 6e9: ["b", "c"]}
    spec = parse_spec(grid_spec(budgets=[2e9, {"flops": 6e9, "models": ["b"], "variants": ["mod"]}]))
    assert {(r.budget, r.variant) for r in build_plan(spec).runs if r.model == "b"} == {
        (2e9, "vanilla"), (2e9, "mod"), (6e9, "mod")}


@pytest.mark.parametrize("budget,expect", [
    ({"flops": 6e9, "models": ["b", "zz"]}, "budgets[1].models: unknown model 'zz'"),
    ({"flops": 6e9, "models": ["b", "b"]}, "budgets[1].models: each model must appear once"),
    ({"flops": 6e9, "modls": ["b"]}, "budgets[1].modls: unknown key (did you mean 'models'?)"),
    ({"flops": -1, "models": ["b"]}, "budgets[1].flops: Input should be greater than 0"),
    ({"flops": 2e9, "models": ["b"]}, "budgets: each budget must appear once"),
    ("lots", "budgets[1]: Input should be a valid number"),
    ({"flops": 6e9, "models": ["b"], "variants": ["nope"]}, "budgets[1].variants: unknown variant 'nope'"),
])
def test_bad_budget_grids_name_the_field(budget, expect):
    assert any(p.startswith(expect) for p in problems(grid_spec(budgets=[2e9, budget]))), expect


def test_bad_grid_exits_2_naming_the_field(write_spec):
    path = write_spec(grid_spec(budgets=[{"flops": 6e9, "models": ["nope"]}]))
    res = CliRunner().invoke(app, ["plan", str(path)])
    assert res.exit_code == 2 and "budgets[0].models" in res.output and "Traceback" not in res.output


def test_per_size_lr_and_batch_override_train_and_reach_the_trainer(write_spec, tmp_path):
    models = [dict(MODELS[0], lr=1e-2, batch_size=8), MODELS[1]]
    spec = parse_spec(grid_spec(models=models))
    plan = {r.model: r for r in build_plan(spec).runs if r.kind == "vanilla"}
    assert (plan["a"].lr, plan["a"].batch_size) == (1e-2, 8)
    assert (plan["b"].lr, plan["b"].batch_size) == (TINY["train"]["lr"], TINY["train"]["batch_size"])
    arch = flops.arch_from_config(spec.models[0], spec.variants["vanilla"], 256)
    assert plan["a"].flops_per_step == 8 * flops.train_flops(arch, TINY["data"]["seq_len"])
    path = write_spec(grid_spec(models=models[:1], variants={"vanilla": {"kind": "vanilla"}}))
    run_sweep(path, tmp_path / "out")
    rows = [json.loads(line) for line in (tmp_path / "out/tiny/2e9-a-vanilla-s0/metrics.jsonl").open()]
    train = [r for r in rows if r["kind"] == "train"]
    assert max(r["lr"] for r in train) == pytest.approx(1e-2)  # the size's lr, not train.lr
    assert train[0]["tokens"] == train[0]["step"] * 8 * TINY["data"]["seq_len"]


def test_micro_batch_must_divide_a_size_batch():
    raw = grid_spec(models=[dict(MODELS[0], batch_size=6)], train=dict(TINY["train"], micro_batch_size=4))
    assert any("a.batch_size (6)" in p for p in problems(raw))


def test_random_router_rejects_router_settings():
    raw = grid_spec(variants={"r": dict(RANDOM, causal="aux_loss", threshold="zero")})
    assert problems(raw) == ["variants.r.router: random has no router or predictor; "
                             "remove causal, threshold"]


def test_resolved_random_spec_parses_again():
    """run.json keeps the resolved spec (every field at its value); sample and bench re-read it."""
    raw = grid_spec(variants={"r": RANDOM})
    resolved = spec_to_dict(parse_spec(raw))
    assert resolved["variants"]["r"]["threshold"] == "prefix"  # the default, written out
    assert spec_to_dict(parse_spec(resolved)) == resolved
    # ...and so do those written when `calibrated` was the default
    older = {**resolved, "variants": {"r": {**resolved["variants"]["r"], "threshold": "calibrated"}}}
    assert parse_spec(older).variants["r"].threshold == "calibrated"


def test_random_routing_fingerprints_ignore_router_settings():
    """A random-routing run computes nothing from router settings: a run.json written with
    other (default) values for them is the same run; a learned router's threshold is not."""
    from modexp.runs.fingerprint import fingerprint

    plan = {"model": "a", "variant": "r", "seed": 0}
    for name, var, same in (("r", RANDOM, True), ("m", {"kind": "mod", "capacity": 0.25}, False)):
        spec = spec_to_dict(parse_spec(grid_spec(variants={name: var})))
        other = {**spec, "variants": {name: {**spec["variants"][name], "threshold": "calibrated"}}}
        p = {**plan, "variant": name}
        assert (fingerprint(spec, p, {})["sha256"] == fingerprint(other, p, {})["sha256"]) is same


# ---------------------------------------------------------------- random routing
CFG = ModelConfig(name="t", n_layers=4, d_model=32, n_heads=2)
V = 64


def make(variant, seed=0):
    torch.manual_seed(seed)
    return build_model(CFG, variant, V)


def test_random_routing_flops_equal_learned_blocks_without_router():
    rand, learned = ModVariant(**RANDOM), ModVariant(kind="mod", capacity=0.25)
    T = 64
    a, b = (flops.arch_from_config(CFG, v, V) for v in (rand, learned))
    blocks = lambda arch: sum(flops.layer_flops(arch, i, T) for i in range(4))  # noqa: E731
    assert blocks(a) == blocks(b) - a.capacities.count(0.25) * 2 * T * 32  # only the router differs
    assert flops.inference_flops(a, T) == flops.forward_flops(a, T)  # no predictor
    net = make(rand)
    assert sum(p.numel() for p in net.parameters()) == flops.param_counts(a)["total"]
    x = torch.randint(0, V, (2, T), generator=torch.Generator().manual_seed(0))
    for train in (False, True):
        with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            out = net(x, x)
            if train:
                out.loss.backward()
        expected = 2 * (flops.train_flops(a, T) if train else flops.forward_flops(a, T))
        assert counter.get_total_flops() == pytest.approx(expected, rel=0.01)


def test_random_routing_picks_k_uniform_sorted_tokens_with_gate_one():
    net = make(ModVariant(**RANDOM, gate="one"))
    layer = block = net.blocks[1]
    B, T = 64, 32
    x, pos = torch.randn(B, T, 32), net.positions(T, torch.device("cpu"))
    out, info = layer(x, pos)
    k = flops.routed_k(0.25, T)
    assert info.idx.shape == (B, k) and (info.idx.diff(dim=1) > 0).all()
    idx = info.idx[0]
    f = block.update(x[:1, idx], net.rotary.at(idx.unsqueeze(0)))
    assert torch.allclose(out[0, idx], x[0, idx] + f[0], atol=1e-6)  # gate 1
    hits = torch.zeros(T).index_add_(0, info.idx.reshape(-1), torch.ones(B * k))
    assert hits.min() > 0 and hits.max() < 3 * B * k / T  # every position drawn, none favoured
    net.set_draws(1, 0)  # the trainer's next step
    _, again = layer(x, pos)
    assert not torch.equal(info.idx, again.idx)  # a new draw every training step
    net.eval()
    _, causal = layer(x, pos, routing="causal")
    assert abs(int(causal.n_routed) / (B * T) - 0.25) < 0.05  # P(z > Phi^-1(1 - c)) = c


def test_random_routing_does_not_touch_the_global_rng():
    net = make(ModVariant(**RANDOM))
    x = torch.randint(0, V, (2, 16))
    torch.manual_seed(7)
    net(x, x)
    after = torch.rand(1)
    torch.manual_seed(7)
    assert torch.equal(torch.rand(1), after)


def test_random_routing_is_reproducible_and_bit_identical_across_resume(write_spec, tmp_path):
    from test_train import _rows, _StopAt

    spec = write_spec(variants={"rand": RANDOM})
    run_sweep(spec, tmp_path / "a")
    run_sweep(spec, tmp_path / "b")
    with pytest.raises(KeyboardInterrupt):
        run_sweep(spec, tmp_path / "c", progress=_StopAt(8))
    run_sweep(spec, tmp_path / "c")
    a, b, c = (tmp_path / d / "tiny" / "2e9-xs-rand-s0" for d in "abc")
    assert _rows(a) == _rows(b) == _rows(c)
    assert read_json(c / "summary.json")["final_eval_loss"] == read_json(a / "summary.json")["final_eval_loss"]
