"""The paper's stochastic-routing control (Raposo et al. 2024 fig. 3; issue 23.6, 24.3):
Gaussian router weights drawn from (seed, layer, step, global row, position) on the device,
top-k of them in training, the Phi^-1(1 - c) rule causally, the update gated by g(z); it
trains the same over any micro-batch size and process count, compiles to one graph, decodes
through generate() as its causal forward computes, plans, runs, evaluates causally and is
reported by the verdict as a control.
"""

from __future__ import annotations

import math

import pytest
import torch
from typer.testing import CliRunner

from modexp import flops
from modexp.cli import app
from modexp.models.build import build_model
from modexp.models.decode import generate
from modexp.models.random_routing import causal_threshold, draw_hash, gaussian
from modexp.plan import build_plan
from modexp.runs.metrics import read_json, read_metrics
from modexp.runs.runner import run_sweep
from modexp.spec import ModelConfig, ModVariant, SpecError, parse_spec

from conftest import TINY

CFG = ModelConfig(name="t", n_layers=4, d_model=32, n_heads=2)
V = 64
PAPER = {"kind": "mod", "capacity": 0.25, "router": "random"}  # gate: sigmoid (the default)
GATE1 = {**PAPER, "gate": "one"}


def make(variant: dict, seed: int = 0, **kw):
    torch.manual_seed(seed)
    return build_model(CFG, ModVariant(**variant), V, seq_len=64, **kw)


def tokens(B: int, T: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


def test_draws_are_standard_normal_and_a_pure_function_of_their_integers():
    seed, step = torch.tensor(5), torch.tensor(3)
    rows, pos = torch.arange(64).unsqueeze(1), torch.arange(512).unsqueeze(0)
    z = gaussian(draw_hash(seed, 1, step, rows, pos))  # (64, 512)
    assert z.shape == (64, 512) and z.dtype == torch.float32 and torch.isfinite(z).all()
    assert abs(z.mean()) < 0.02 and abs(z.std() - 1) < 0.02
    assert abs((z > causal_threshold(0.125)).float().mean() - 0.125) < 0.01  # P(z > q) = c
    # a row's draws depend on its own integers only: any slice of rows draws the same
    assert torch.equal(gaussian(draw_hash(seed, 1, step, rows[10:12], pos)), z[10:12])
    for other in ((6, 1, 3), (5, 2, 3), (5, 1, 4)):  # seed, layer, step: each its own stream
        s, layer, t = other
        w = gaussian(draw_hash(torch.tensor(s), layer, torch.tensor(t), rows, pos))
        assert (w == z).float().mean() < 0.01
    assert (z[:, :-1] == z[:, 1:]).float().mean() < 0.01 and (z[:-1] == z[1:]).float().mean() < 0.01
    assert causal_threshold(1.0) == -math.inf


@pytest.mark.parametrize("gate", ["sigmoid", "identity", "one"])
def test_topk_routes_the_top_draws_and_gates_their_update(gate):
    net = make({**PAPER, "gate": gate}).train()
    block = net.blocks[1]
    B, T = 8, 32
    x, pos = torch.randn(B, T, 32), net.positions(T, torch.device("cpu"))
    net.set_draws(7, 12)
    out, info = block(x, pos)
    z = block.random.weights(B, pos.index, True)
    k = flops.routed_k(0.25, T)
    assert torch.equal(info.idx, z.topk(k, dim=1).indices.sort(dim=1).values)
    idx = info.idx[0]
    f = block.update(x[:1, idx], net.rotary.at(idx.unsqueeze(0)))[0]
    g = {"sigmoid": torch.sigmoid, "identity": lambda r: r, "one": torch.ones_like}[gate](z[0, idx])
    assert torch.allclose(out[0, idx], x[0, idx] + g.unsqueeze(-1) * f, atol=1e-6)
    skipped = torch.ones(T, dtype=torch.bool).index_fill_(0, idx, False)
    assert torch.equal(out[0, skipped], x[0, skipped])  # bit-identical pass-through
    _, same = block(x, pos)
    assert torch.equal(same.idx, info.idx)  # the step and row fix the draw...
    net.set_draws(8, 12)
    _, nxt = block(x, pos)
    assert not torch.equal(nxt.idx, info.idx)  # ...and the next step draws anew


def test_micro_batches_draw_what_the_whole_batch_draws():
    """The trainer sets (step, first global row) per micro-batch: 2 x 4 rows, 4 x 2 and one
    8-row batch route every global row alike (issue 24.3)."""
    net = make(PAPER).train()
    idx = tokens(8, 32)
    picks = {}
    for micro in (2, 4, 8):
        got = []
        for start in range(0, 8, micro):
            net.set_draws(3, start)
            got.append(torch.cat([i.idx for i in _infos(net, idx[start:start + micro])], dim=1))
        picks[micro] = torch.cat(got)
    assert torch.equal(picks[2], picks[4]) and torch.equal(picks[4], picks[8])


def _infos(net, idx):
    infos = []
    hooks = [b.register_forward_hook(lambda m, a, out: infos.append(out[1])) for _, b in net.routed()]
    net(idx, idx)
    for h in hooks:
        h.remove()
    return infos


def test_evaluation_draws_one_pattern_per_layer_and_row():
    net = make(PAPER).eval()
    idx = tokens(4, 32)
    with torch.no_grad():
        net.set_draws(5, 0)
        a = _infos(net, idx)
        net.set_draws(9, 0)  # the training step does not enter evaluation's draws
        b = _infos(net, idx)
    assert all(torch.equal(x.idx, y.idx) for x, y in zip(a, b))
    assert not torch.equal(a[0].idx, a[1].idx)  # each layer its own pattern


@pytest.mark.parametrize("variant", [PAPER, GATE1])
@pytest.mark.parametrize("B", [1, 3])
def test_generate_decodes_what_the_causal_forward_computes(variant, B):
    """The prefill and every decode step route a token iff its draw passes Phi^-1(1 - c), at
    its own (row, position): teacher-forced logits equal the full causal forward's."""
    net = make({**variant, "capacity": 0.5}).eval()
    idx = tokens(B, 24, seed=1)
    gen = generate(net, idx[:, :6], 18, feed=idx[:, 6:], keep_logits=True)
    with torch.no_grad():
        net.set_draws(0, 0)
        full = net(idx[:, :23], routing="causal")
    got = torch.stack(gen.logits, dim=1)  # (B, 18, V): after tokens 5..22
    assert torch.allclose(got, full.logits[:, 5:], atol=1e-5)
    frac = gen.routed.float().mean()
    assert 0.2 < frac < 0.8  # capacity 0.5 in expectation: decoding really routes and skips


def test_training_compiles_to_one_graph_over_steps_and_micro_batches():
    from torch._dynamo.testing import CompileCounter
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    net = make(PAPER).train()
    counter = CompileCounter()
    compiled = torch.compile(net, backend=counter)
    for step in range(2):
        for micro in range(3):
            net.set_draws(step, 2 * micro)
            idx = tokens(2, 16, seed=3 * step + micro)
            out = compiled(idx, idx)
            (out.loss / 3).backward()
    assert counter.frame_count == 1, counter.frame_count
    assert not counters["graph_break"], dict(counters["graph_break"])
    torch._dynamo.reset()


def test_flops_are_learned_routings_minus_the_router():
    T = 64
    learned = ModVariant(kind="mod", capacity=0.25, causal="none")
    a, b = (flops.arch_from_config(CFG, ModVariant(**PAPER), V), flops.arch_from_config(CFG, learned, V))
    assert flops.train_flops(a, T) == flops.train_flops(b, T) - 3 * a.capacities.count(0.25) * 2 * T * 32
    assert flops.inference_flops(a, T) == flops.forward_flops(a, T)  # no predictor
    assert sum(p.numel() for p in make(PAPER).parameters()) == flops.param_counts(a)["total"]


def test_spec_gate_one_is_the_random_controls_only():
    base = {**TINY}
    with pytest.raises(SpecError) as e:
        parse_spec({**base, "variants": {"m": {"kind": "mod", "gate": "one"}}})
    assert e.value.problems[0].startswith("variants.m")
    assert "gate: one" in e.value.problems[0] and "router: random" in e.value.problems[0]
    spec = parse_spec({**base, "variants": {"p": PAPER, "g": GATE1, "i": {**PAPER, "gate": "identity"}}})
    assert [spec.variants[v].gate for v in "pgi"] == ["sigmoid", "one", "identity"]


def test_both_controls_plan_run_evaluate_causally_sample_and_are_verdict_controls(write_spec, tmp_path):
    variants = {"vanilla": {"kind": "vanilla"}, "rand": PAPER, "gate1": GATE1}
    spec = write_spec(variants=variants)
    plan = {r.variant: r for r in build_plan(parse_spec({**TINY, "variants": variants})).runs}
    assert plan["rand"].router == plan["gate1"].router == "random" and plan["rand"].draws
    assert plan["rand"].flops_per_step == plan["gate1"].flops_per_step < plan["vanilla"].flops_per_step
    run_sweep(spec, tmp_path / "r")
    for v in ("rand", "gate1"):
        run = tmp_path / "r" / "tiny" / f"2e9-xs-{v}-s0"
        last = [r for r in read_metrics(run / "metrics.jsonl") if r["kind"] == "eval"][-1]
        assert math.isfinite(last["eval_loss_causal"]) and 0 < last["routed_frac_causal"][0] < 1
        assert read_json(run / "summary.json")["state"] == "done"
        res = CliRunner().invoke(app, ["sample", str(run), "--prompt", "def ", "--max-new-tokens", "8"])
        assert res.exit_code == 0, res.output
    from modexp.analysis.results import load_results
    from modexp.analysis.roles import CONTROL, roles

    assert {v: r for v, r in roles(load_results(tmp_path / "r" / "tiny").runs).items()
            if v != "vanilla"} == {"rand": CONTROL, "gate1": CONTROL}


def test_runs_drawn_the_old_way_are_not_taken_for_the_new_control():
    """A run.json of before (uniform draws, gate 1) has no `draws` in its plan entry: its
    fingerprint differs from the paper's control's, so its results are never mixed in."""
    from modexp.runs.fingerprint import fingerprint
    from modexp.spec import spec_to_dict

    spec = spec_to_dict(parse_spec({**TINY, "variants": {"r": PAPER}}))
    entry = next(r for r in build_plan(parse_spec({**TINY, "variants": {"r": PAPER}})).runs).to_dict()
    old = {k: v for k, v in entry.items() if k != "draws"}
    assert fingerprint(spec, entry, {})["sha256"] != fingerprint(spec, old, {})["sha256"]
    van = spec_to_dict(parse_spec(TINY))
    v_entry = next(r for r in build_plan(parse_spec(TINY)).runs if r.kind == "vanilla").to_dict()
    assert fingerprint(van, v_entry, {}) == fingerprint(van, {k: v for k, v in v_entry.items()
                                                              if k != "draws"}, {})


def test_two_processes_draw_what_one_process_draws(tmp_path):
    """1 and 2 gloo processes, and one process in micro-batches of 2 or whole batches of 4,
    train the control alike: each rank draws at its own global rows (DDP never broadcasts
    them), so routing never depends on the world size or the micro-batch."""
    from test_distributed import SPEC, _write, assert_same_curve, curve, finish, one_thread, torchrun

    spec = {**SPEC, "variants": {"rand": PAPER}}
    path = _write(tmp_path / "spec.yaml", spec)
    proc = torchrun(path, tmp_path / "ddp")
    out = finish(proc)
    assert proc.returncode == 0, out
    micro = _write(tmp_path / "micro.yaml", {**spec, "train": {**spec["train"], "micro_batch_size": 2}})
    with one_thread():
        run_sweep(micro, tmp_path / "micro")
        run_sweep(path, tmp_path / "whole")
    run = "2e9-xs-rand-s0"
    ddp = curve(tmp_path / "ddp" / "ddp" / run)
    assert_same_curve(ddp, curve(tmp_path / "micro" / "ddp" / run), tol=1e-5)
    # whole batches round differently, but route the same tokens: no routing flips
    assert_same_curve(ddp, curve(tmp_path / "whole" / "ddp" / run), tol=1e-4,
                      keys=("train_loss", "eval_loss", "eval_loss_causal"))
