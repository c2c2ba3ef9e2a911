"""KV-cached decoding (modexp/models/decode.py) against the full causal-mode forward pass; sample_run.

The routers and predictors are rigged so each routed layer routes some tokens and skips
others (by token id, far from the decision boundary), so the tests exercise ragged caches.
"""

from __future__ import annotations

import json

import pytest
import torch

from modexp.models.build import build_model
from modexp.models.decode import KVCache, generate, make_caches
from modexp.runs.sample import sample_run
from modexp.spec import ModelConfig, ModVariant, SpecError, VanillaVariant, parse_spec

V = 64
CFG = ModelConfig(name="t", n_layers=4, d_model=32, n_heads=2)
VARIANTS = {"vanilla": VanillaVariant(kind="vanilla"),
            "predictor": ModVariant(kind="mod", capacity=0.25, causal="predictor"),
            "aux_loss": ModVariant(kind="mod", capacity=0.25, causal="aux_loss")}


def rigged(variant, seed: int = 0):
    """A tiny model whose routed layer i routes a token iff feature i of its embedding is +1."""
    torch.manual_seed(seed)
    return rig(build_model(CFG, variant, V).eval())


def rig(net):
    """Rig a model of vocabulary V in place: routed layer i routes a token iff its id is even
    (i = 0) or divisible by 3 (i = 1), its logit far from the threshold either way."""
    ids = torch.arange(V)
    with torch.no_grad():
        for p in net.blocks.parameters():  # sharper attention than at init: mistakes show
            p.mul_(4.0 if p.dim() == 2 else 1.0)
        # feature 0: even ids; feature 1: ids divisible by 3 -> different decisions per layer
        net.embed.weight[:, 0] = torch.where(ids % 2 == 0, 1.0, -1.0)
        net.embed.weight[:, 1] = torch.where(ids % 3 == 0, 1.0, -1.0)
        for feat, (_, layer) in enumerate(net.routed()):
            layer.router.weight.zero_()
            layer.router.weight[0, feat] = 10.0  # logit ~ +-10: the aux_loss decision
            if layer.decision.predictor is not None:
                first, last = layer.decision.predictor[0], layer.decision.predictor[2]
                first.weight.zero_(), first.bias.zero_(), last.weight.zero_()
                first.weight[0, feat] = 1.0  # hidden 0 = gelu(+-1) = 0.84 or -0.16
                last.weight[0, 0], last.bias[0] = 100.0, -30.0  # logit ~ +54 or -46
    return net


def tokens(B: int, T: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


def causal_decisions(net, idx) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Full causal forward: logits and each routed layer's decisions (B, T)."""
    seen = []
    hooks = [r.register_forward_hook(lambda m, a, out: seen.append(out[1].decision))
             for _, r in net.routed()]
    with torch.no_grad():
        logits = net(idx, routing="causal").logits
    for h in hooks:
        h.remove()
    return logits, seen


@pytest.mark.parametrize("name", list(VARIANTS))
@pytest.mark.parametrize("B, P", [(1, 7), (2, 1), (2, 7)])  # batch 1 has its own fast path
def test_cached_decode_equals_full_causal_forward(name, B, P):
    net, idx = rigged(VARIANTS[name]), tokens(B, 24)
    full, decisions = causal_decisions(net, idx[:, :-1])
    g = generate(net, idx[:, :P], 24 - P, feed=idx[:, P:], keep_logits=True)
    cached = torch.stack(g.logits, dim=1)  # (B, 24 - P, V): predictions for positions P..23
    torch.testing.assert_close(cached, full[:, P - 1:], atol=1e-5, rtol=1e-5)
    for d in decisions:  # the routing is not trivial: in every routed layer some go, some skip
        assert d.any() and not d.all()
    if decisions:
        assert g.routed.any() and not g.routed.all()


@pytest.mark.parametrize("name", ["predictor", "aux_loss"])
def test_skipped_tokens_never_enter_a_routed_layers_cache(name):
    net, idx = rigged(VARIANTS[name]), tokens(3, 20, seed=1)
    keys = {}  # layer -> (B, nh, kmax, hs) keys of the gathered routed tokens, full forward

    def grab(i):
        def hook(attn, args, out):
            keys[i] = attn.heads(args[0], args[1])[1]
        return hook

    hooks = [net.blocks[i].attn.register_forward_hook(grab(i)) for i, _ in net.routed()]
    _, decisions = causal_decisions(net, idx[:, :-1])
    for h in hooks:
        h.remove()
    g = generate(net, idx[:, :5], 15, feed=idx[:, 5:])  # feeds exactly idx[:, :-1]
    routed_at = [i for i, _ in net.routed()]
    for layer, cache in enumerate(g.caches):
        if layer not in routed_at:
            assert cache.lengths == [19] * 3  # dense: every token
            continue
        d = decisions[routed_at.index(layer)]  # (B, 19)
        assert cache.lengths == d.sum(1).tolist()  # exactly the routed tokens, no others
        for b, n in enumerate(cache.lengths):
            torch.testing.assert_close(cache.k[b, :, :n], keys[layer][b, :, :n],
                                       atol=1e-5, rtol=1e-5)
    routed = [c.lengths for i, c in enumerate(g.caches) if i in routed_at]
    assert any(len(set(lens)) > 1 for lens in routed)  # ragged rows were exercised


@pytest.mark.parametrize("name", list(VARIANTS))
def test_batch_decode_equals_per_row_decode(name):
    net, prompt = rigged(VARIANTS[name]), tokens(4, 6, seed=2)
    batch = generate(net, prompt, 16, keep_logits=True)
    for b in range(4):
        row = generate(net, prompt[b:b + 1], 16, feed=batch.tokens[b:b + 1, 6:], keep_logits=True)
        torch.testing.assert_close(torch.stack(row.logits)[:, 0], torch.stack(batch.logits)[:, b],
                                   atol=1e-5, rtol=1e-5)
        for i, (c_batch, c_row) in enumerate(zip(batch.caches, row.caches)):
            assert c_row.lengths == [c_batch.lengths[b]], f"layer {i} row {b}"


@pytest.mark.parametrize("name", ["predictor", "aux_loss"])
def test_batch_decode_with_one_or_some_rows_routed_equals_full_forward(name):
    """Steps where one row routes (run as batch 1 on its cache row) and where several do."""
    net, idx = rigged(VARIANTS[name]), tokens(4, 24, seed=3)
    full, _ = causal_decisions(net, idx[:, :-1])
    g = generate(net, idx[:, :4], 20, feed=idx[:, 4:], keep_logits=True)
    torch.testing.assert_close(torch.stack(g.logits, 1), full[:, 3:], atol=1e-5, rtol=1e-5)
    n = g.routed.sum(-1)  # (R, steps): rows routed per layer and step
    assert (n == 1).any() and ((n > 1) & (n < 4)).any()  # both paths were taken


def test_greedy_is_deterministic_and_picks_the_argmax():
    net, prompt = rigged(VARIANTS["predictor"]), tokens(2, 4)
    a = generate(net, prompt, 12, keep_logits=True)
    b = generate(net, prompt, 12)
    assert torch.equal(a.tokens, b.tokens)
    assert torch.equal(a.tokens[:, 4:], torch.stack(a.logits, 1).argmax(-1))


def test_seeded_sampling_repeats_and_respects_top_k():
    net, prompt = rigged(VARIANTS["aux_loss"]), tokens(2, 4)
    a = generate(net, prompt, 20, temperature=1.0, top_k=5, seed=3, keep_logits=True)
    b = generate(net, prompt, 20, temperature=1.0, top_k=5, seed=3)
    c = generate(net, prompt, 20, temperature=1.0, top_k=5, seed=4)
    assert torch.equal(a.tokens, b.tokens) and not torch.equal(a.tokens, c.tokens)
    top5 = torch.stack(a.logits, 1).topk(5, dim=-1).indices  # (B, n, 5)
    assert (top5 == a.tokens[:, 4:, None]).any(-1).all()


def test_topk_routing_refuses_a_cache():
    net = rigged(VARIANTS["predictor"])
    with pytest.raises(ValueError, match="causal"):
        net(tokens(1, 8), caches=make_caches(net, 1, 8))  # top-k prefill would not be causal


# ---------------------------------------------------------------- sample_run
def write_run(tmp_path, variant: str = "mod"):
    """A run folder as the runner writes it, with a checkpoint of a freshly built model."""
    from tests.conftest import TINY

    spec = parse_spec(TINY)
    run_dir = tmp_path / f"2e9-xs-{variant}-s0"
    run_dir.mkdir()
    plan = {"run_id": run_dir.name, "model": "xs", "variant": variant, "vocab": 256,
            "kind": spec.variants[variant].kind, "budget": 2e9, "seed": 0}
    run = {"plan": plan, "spec": spec.model_dump(mode="json")}
    (run_dir / "run.json").write_text(json.dumps(run))
    torch.manual_seed(0)
    net = build_model(spec.models[0], spec.variants[variant], 256)
    torch.save({"model": net.state_dict(), "step": 7}, run_dir / "ckpt.pt")
    return run_dir


@pytest.mark.parametrize("variant", ["vanilla", "mod"])
def test_sample_run_returns_text_and_routing(tmp_path, variant):
    res = sample_run(write_run(tmp_path, variant), "def f(x):", max_new_tokens=10, seed=1,
                     device="cpu")
    assert len(res.tokens) == 10 and isinstance(res.text, str) and res.step == 7
    assert res.tokens_per_s > 0
    if variant == "mod":
        assert list(res.routed_frac) == [1]  # xs: 2 layers, layer 1 routed
        assert 0.0 <= res.routed_frac[1] <= 1.0
    else:
        assert res.routed_frac == {}


def test_sample_run_bad_folders(tmp_path):
    with pytest.raises(SpecError, match="not a run folder"):
        sample_run(tmp_path / "nope", "x")
    run_dir = write_run(tmp_path)
    (run_dir / "ckpt.pt").unlink()
    with pytest.raises(SpecError, match="no checkpoint"):
        sample_run(run_dir, "x")


def test_cache_grows_keeping_its_contents_and_refuses_overflow():
    cache = KVCache(2, 1, 2, max_len=5, size=1, dtype=torch.float32, device=torch.device("cpu"))
    for n in range(5):
        kv = torch.full((2, 1, 1, 2), float(n))
        cache.extend(kv, kv, None)
    assert cache.lengths == [5, 5] and cache.k.size(2) == 5
    assert cache.k[0, 0, :, 0].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
    with pytest.raises(RuntimeError, match="full"):
        cache.extend(kv, kv, None)


def test_sample_run_bad_arguments(tmp_path):
    run_dir = write_run(tmp_path)
    with pytest.raises(SpecError, match="top-k"):
        sample_run(run_dir, "x", top_k=0)
    with pytest.raises(SpecError, match="empty"):
        sample_run(run_dir, "")


def test_sample_command_prints_the_continuation_and_routing(tmp_path):
    from typer.testing import CliRunner

    from modexp.cli import app

    run_dir = write_run(tmp_path)
    result = CliRunner().invoke(app, ["sample", str(run_dir), "--prompt", "import os",
                                      "--max-new-tokens", "12", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("import os")
    assert "2e9-xs-mod-s0 (step 7): 12 tokens" in result.output and "L1 " in result.output
    bad = CliRunner().invoke(app, ["sample", str(tmp_path / "nope"), "--prompt", "x"])
    assert bad.exit_code == 2 and "not a run folder" in bad.output
    assert "Traceback" not in bad.output


def test_cached_decode_uses_the_decision_threshold():
    """Predictor logits shifted up by 50 and a threshold of 50: the same routing as the rigged
    model, in the full causal forward and in cached decoding alike (decoding at logit > 0
    would route every token)."""
    net, idx = rigged(VARIANTS["predictor"]), tokens(2, 24, seed=4)
    with torch.no_grad():
        for d in net.decisions():
            d.predictor[2].bias += 50.0
            d.threshold.fill_(50.0)
    full, decisions = causal_decisions(net, idx[:, :-1])
    for P, B in ((7, 1), (7, 2)):
        g = generate(net, idx[:B, :P], 24 - P, feed=idx[:B, P:], keep_logits=True)
        torch.testing.assert_close(torch.stack(g.logits, 1), full[:B, P - 1:], atol=1e-5, rtol=1e-5)
        assert g.routed.any() and not g.routed.all()


def test_sample_length_defaults_to_the_trained_seq_len_and_warns_past_it(tmp_path):
    run_dir = write_run(tmp_path)  # TINY: seq_len 32
    res = sample_run(run_dir, "def f(x):", device="cpu")
    assert len(res.tokens) == 32 - len("def f(x):") and res.warnings == []
    assert res.routing is not None and res.routing.capacity == [0.25]
    assert res.routing.flop_ratio > 1 and list(res.routed_frac) == res.routing.layers == [1]
    long = sample_run(run_dir, "def f(x):", max_new_tokens=30, device="cpu")
    assert len(long.tokens) == 30 and "seq_len 32" in long.warnings[0]


def test_control_bytes_are_printed_escaped():
    from modexp.runs.sample import escape_controls

    assert escape_controls("a\x1b[2Jb\n\tc\x00\x7f\r") == "a\\x1b[2Jb\n\tc\\x00\\x7f\\r"
    assert escape_controls("héllo ✓") == "héllo ✓"


def test_routing_check_flags_a_layer_off_capacity():
    from modexp.models.routing_check import check_routing
    from tests.conftest import TINY

    spec = parse_spec(TINY)
    model, variant = spec.models[0], spec.variants["mod"]
    at = check_routing(model, variant, 256, 32, [0.25], 8, 16)
    low = check_routing(model, variant, 256, 32, [0.05], 8, 16)
    assert at.off == [] and low.off == [1] and "OFF CAPACITY" in low.summary()
    assert low.flop_ratio > at.flop_ratio > 1  # routing less costs fewer FLOPs


@pytest.mark.parametrize("name", list(VARIANTS))
@pytest.mark.parametrize("B", [1, 2])
def test_float64_model_trains_and_decodes_as_its_full_forward(name, B):
    """A float64 model runs in float64 throughout (router and predictor too, where fp32 would
    clash with their weights), so cached decoding meets the full forward to ~1e-12."""
    net, idx = rigged(VARIANTS[name]).double(), tokens(B, 20, seed=2)
    out = net.train()(idx, idx)
    assert out.loss.dtype == torch.float64
    out.loss.backward()
    net.eval().zero_grad()
    full, _ = causal_decisions(net, idx[:, :-1])
    g = generate(net, idx[:, :5], 15, feed=idx[:, 5:], keep_logits=True)
    cached = torch.stack(g.logits, dim=1)
    assert cached.dtype == torch.float64
    torch.testing.assert_close(cached, full[:, 4:], atol=1e-10, rtol=1e-10)
