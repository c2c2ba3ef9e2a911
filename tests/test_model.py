"""The vanilla and Mixture-of-Depths models against flops.py and the MoD paper's definition.

Raposo et al. 2024 (arXiv 2404.02258); each test names the mistake it would catch. Tiny
configs on CPU.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from modexp import flops
from modexp.models.build import build_model
from modexp.models.mod import RoutedBlock, membership
from modexp.spec import ModelConfig, ModVariant, VanillaVariant

V = 64  # vocabulary of the tiny models


def cfg(**kw) -> ModelConfig:
    base = dict(name="t", n_layers=2, d_model=32, n_heads=2)
    return ModelConfig(**{**base, **kw})


def mod(**kw) -> ModVariant:
    return ModVariant(kind="mod", **kw)


VANILLA = VanillaVariant(kind="vanilla")


def make(model: ModelConfig, variant, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(model, variant, V)


def tokens(B: int, T: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


def routed(net, i: int) -> RoutedBlock:
    return net.blocks[i]


def layer_call(net, i: int, x: torch.Tensor, routing: str = "topk"):
    return routed(net, i)(x, net.positions(x.size(1), x.device), routing)


# ---------------------------------------------------------------- parameters and FLOPs
CONFIGS = [
    (cfg(), VANILLA),
    (cfg(mlp="swiglu", tie_embeddings=True, n_layers=3), VANILLA),
    (cfg(n_layers=4), mod(causal="predictor")),
    (cfg(n_layers=4, mlp="swiglu", tie_embeddings=True), mod(causal="aux_loss", route_every=1)),
    (cfg(n_layers=3, d_ff=40), mod(causal="none", layers={0: 0.5, 2: 0.25})),
    (cfg(n_layers=3, mlp="swiglu"), mod(causal="predictor", layers={1: 1.0}, predictor_hidden=7)),
]


@pytest.mark.parametrize("model,variant", CONFIGS)
def test_param_count_equals_flops_py(model, variant):
    net = make(model, variant)
    expected = flops.param_counts(flops.arch_from_config(model, variant, V))["total"]
    assert sum(p.numel() for p in net.parameters()) == expected


def counted(net, idx, train: bool = False) -> int:
    # MATH SDPA decomposes attention into counted matmuls (the CPU flash kernel is not counted).
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        out = net(idx, idx)
        if train:
            out.loss.backward()
    return counter.get_total_flops()


FLOP_CASES = [
    (cfg(), VANILLA, 16),
    (cfg(mlp="swiglu", tie_embeddings=True), VANILLA, 33),
    (cfg(n_layers=4), mod(capacity=0.125), 64),
    (cfg(n_layers=4), mod(capacity=0.5, route_every=1, causal="aux_loss"), 40),
    (cfg(n_layers=3, mlp="swiglu"), mod(capacity=1.0, route_every=3, causal="none"), 16),
    (cfg(n_layers=3), mod(layers={0: 0.3, 2: 0.05}, causal="predictor"), 37),
    # heads of 8: training attention through attention.matmul_attention (counted matmuls too).
    # Every T here is <= 64, one query block: the full square flops.py charges; above 64 the
    # matmul path skips the masked quarter and would be counted below the convention.
    (cfg(d_model=16), VANILLA, 24),
    (cfg(n_layers=4, d_model=16), mod(capacity=0.25, causal="aux_loss"), 32),
]


@pytest.mark.parametrize("model,variant,T", FLOP_CASES)
def test_forward_flops_match_flop_counter(model, variant, T):
    """A masked (not gathered) routed block would be charged dense FLOPs and fail here."""
    arch = flops.arch_from_config(model, variant, V)
    B = 2
    expected = B * (flops.forward_flops(arch, T) + flops.predictors_forward_flops(arch, T))
    assert abs(counted(make(model, variant), tokens(B, T)) - expected) <= 0.01 * expected


@pytest.mark.parametrize("model,variant,T", FLOP_CASES)
def test_train_flops_match_flop_counter(model, variant, T):
    """Forward + backward = 3x forward matmuls, predictors counted exactly (stop-gradient input).

    Exact here because MATH SDPA runs attention as plain matmuls whose backward is two matmuls
    each; flash / efficient kernels are charged 2.5x forward in backward (a recompute), so on
    such a kernel the count exceeds flops.train_flops by 0.5x the attention logit/value terms.
    """
    arch = flops.arch_from_config(model, variant, V)
    B = 2
    expected = B * flops.train_flops(arch, T)
    got = counted(make(model, variant), tokens(B, T), train=True)
    assert abs(got - expected) <= 0.01 * expected


# ---------------------------------------------------------------- the routed layer
def test_non_routed_tokens_bit_identical_and_exactly_k_routed():
    model, variant = cfg(n_layers=2), mod(capacity=0.25, causal="aux_loss")
    net = make(model, variant)
    B, T = 3, 32
    x = torch.randn(B, T, model.d_model)
    out, info = layer_call(net, 1, x)
    k = flops.routed_k(0.25, T)
    assert info.idx.shape == (B, k)
    assert (info.idx.diff(dim=1) > 0).all()  # sorted by position, no repeats
    member = info.member.bool()
    assert (member.sum(1) == k).all()
    assert torch.equal(out[~member], x[~member])
    assert (out[member] != x[member]).any(-1).all()  # every routed token was updated
    r = routed(net, 1).router(x).squeeze(-1)
    for b in range(B):  # the routed set is each row's own top-k of the router logits
        assert set(info.idx[b].tolist()) == set(torch.topk(r[b], k).indices.tolist())
    stats = net(tokens(B, T)).stats
    assert stats["routed"].tolist() == [B * k] and int(stats["tokens"]) == B * T


@pytest.mark.parametrize("gate", ["identity", "sigmoid"])
def test_gathered_tokens_keep_original_positions(gate):
    """Reference g(r~) f(x~, positions=idx); RoPE at 0..k-1 gives a clearly different update."""
    model, variant = cfg(), mod(capacity=0.25, gate=gate, causal="none")
    net = make(model, variant)
    block = net.blocks[1]
    with torch.no_grad():  # sharp attention, so relative positions visibly matter
        block.attn.qkv.weight.normal_(0.0, 0.5)
    x = torch.randn(2, 32, model.d_model)
    out, info = layer_call(net, 1, x)
    idx, layer = info.idx, routed(net, 1)
    xs = torch.stack([x[b, idx[b]] for b in range(2)])  # (B, k, d)
    r = layer.router(xs).squeeze(-1)
    g = (torch.sigmoid(r) if gate == "sigmoid" else r).unsqueeze(-1)
    got = torch.stack([out[b, idx[b]] for b in range(2)]) - xs  # the applied update
    right = g * block.update(xs, net.rotary.at(idx))
    compressed = g * block.update(xs, net.rotary.at(torch.arange(idx.size(1)).expand_as(idx)))
    err, gap = (got - right).abs().max(), (compressed - right).abs().max()
    assert err < 1e-6 and gap > 1e3 * err + 1e-4


def test_capacity_one_with_unit_router_is_the_vanilla_model_bit_for_bit():
    model = cfg(n_layers=3, mlp="swiglu")
    variant = mod(layers={0: 1.0, 1: 1.0, 2: 1.0}, gate="identity", causal="none")
    vanilla, routed_net = make(model, VANILLA, seed=1), make(model, variant, seed=2)
    missing, unexpected = routed_net.load_state_dict(vanilla.state_dict(), strict=False)
    assert not unexpected and all(".router." in k or ".decision." in k for k in missing)

    class One(nn.Module):  # the router weight held at 1: g(r) = r = 1 exactly
        def forward(self, x):
            return torch.ones(*x.shape[:-1], 1, dtype=x.dtype)

    for _, layer in routed_net.routed():
        layer.router = One()
    idx = tokens(2, 24)
    assert torch.equal(routed_net(idx).logits, vanilla(idx).logits)


@pytest.mark.parametrize("causal", ["none", "predictor", "aux_loss"])
@pytest.mark.parametrize("gate", ["identity", "sigmoid"])
def test_router_gets_gradient_from_lm_loss_alone(causal, gate):
    model, variant = cfg(n_layers=4), mod(capacity=0.25, causal=causal, gate=gate)
    net = make(model, variant)
    idx = tokens(2, 32)
    net(idx, idx).lm_loss.backward()
    for _, layer in net.routed():
        assert layer.router.weight.grad is not None and layer.router.weight.grad.abs().sum() > 0


def test_predictor_sends_no_gradient_into_the_trunk():
    model, variant = cfg(n_layers=4), mod(capacity=0.25, causal="predictor")
    net = make(model, variant)
    idx = tokens(2, 32)
    net(idx, idx).predictor_loss.backward()
    for name, p in net.named_parameters():
        if ".predictor." in name:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None or not p.grad.any(), name
    # ...so the total loss trains the trunk exactly as the LM loss alone does.
    grads = {}
    for which in ("lm_loss", "loss"):
        net.zero_grad(set_to_none=True)
        getattr(net(idx, idx), which).backward()
        grads[which] = {n: p.grad.clone() for n, p in net.named_parameters()
                        if ".predictor." not in n}
    assert all(torch.equal(grads["lm_loss"][n], grads["loss"][n]) for n in grads["loss"])


@pytest.mark.parametrize("causal", ["predictor", "aux_loss"])
def test_bce_targets_are_each_rows_topk_membership(causal):
    """A lost batch offset (all targets in row 0, or one top-k over B*T) fails here."""
    model, variant = cfg(), mod(capacity=0.25, causal=causal)
    net = make(model, variant)
    B, T = 4, 16
    x = torch.randn(B, T, model.d_model)
    x[1] *= 3.0  # rows on very different scales: a top-k over the flat batch would differ
    _, info = layer_call(net, 1, x)
    layer, k = routed(net, 1), flops.routed_k(0.25, T)
    r = layer.router(x).squeeze(-1)
    target = torch.zeros(B, T)
    for b in range(B):
        target[b, torch.topk(r[b], k).indices] = 1.0
    assert torch.equal(info.member, target)
    if causal == "aux_loss":
        assert torch.allclose(info.aux_loss, F.binary_cross_entropy_with_logits(r, target))
    else:
        expected = F.binary_cross_entropy_with_logits(layer.decision.predictor(x).squeeze(-1), target)
        assert torch.allclose(info.predictor_loss, expected)


def test_forward_losses_and_stats():
    model, variant = cfg(n_layers=4), mod(capacity=0.25, causal="aux_loss", aux_loss_weight=0.5)
    net = make(model, variant)
    B, T = 3, 32
    idx = tokens(B, T)
    out = net(idx, idx)
    assert out.predictor_loss is None and out.aux_loss is not None
    assert torch.allclose(out.loss, out.lm_loss + 0.5 * out.aux_loss)
    assert "pred_tp" not in out.stats  # training does not score the causal decision...
    out = net.eval()(idx, idx)  # ...evaluation does
    confusion = sum(out.stats[f"pred_{c}"] for c in ("tp", "fp", "fn", "tn"))
    assert confusion.tolist() == [B * T, B * T]
    assert (out.stats["pred_tp"] + out.stats["pred_fn"]).tolist() == [B * 8, B * 8]
    assert all(not v.requires_grad for v in out.stats.values())
    assert net(idx).loss is None


# ---------------------------------------------------------------- causal routing
@pytest.mark.parametrize("causal", ["predictor", "aux_loss"])
def test_causal_mode_is_causal_and_topk_is_not(causal):
    model, variant = cfg(n_layers=4), mod(capacity=0.25, causal=causal)
    net = make(model, variant)
    B, T, t = 4, 32, 12
    idx = tokens(B, T)
    later = idx.clone()
    later[:, t + 1:] = tokens(B, T - t - 1, seed=7)
    out = net(idx, routing="causal")
    routed_tokens = out.stats["routed"]
    assert ((routed_tokens > 0) & (routed_tokens < B * T)).all()  # a real decision per token
    a, b = out.logits[:, :t + 1], net(later, routing="causal").logits[:, :t + 1]
    assert torch.allclose(a, b, atol=1e-5, rtol=0)
    # Top-k is not causal: later tokens' scores change which earlier tokens are routed.
    a, b = net(idx).logits[:, :t + 1], net(later).logits[:, :t + 1]
    assert not torch.allclose(a, b, atol=1e-5, rtol=0)


@pytest.mark.parametrize("causal", ["predictor", "aux_loss"])
def test_causal_mode_routes_each_rows_own_decisions(causal):
    """Per row: tokens with logit > 0 run the block among themselves; others untouched."""
    model, variant = cfg(), mod(capacity=0.25, causal=causal, gate="identity", threshold="calibrated")
    net = make(model, variant)
    B, T = 3, 20
    x = torch.randn(B, T, model.d_model)
    out, info = layer_call(net, 1, x, routing="causal")
    layer, block = routed(net, 1), net.blocks[1]
    r = layer.router(x).squeeze(-1)
    logit = r if causal == "aux_loss" else layer.decision.predictor(x).squeeze(-1)
    decision = logit > 0
    assert torch.equal(info.decision, decision)
    assert len(set(decision.sum(1).tolist())) > 1  # rows route different counts: padding used
    assert torch.equal(out[~decision], x[~decision])
    for b in range(B):
        sel = decision[b].nonzero().squeeze(1)
        xs = x[b, sel].unsqueeze(0)
        expected = xs + r[b, sel].view(1, -1, 1) * block.update(xs, net.rotary.at(sel.unsqueeze(0)))
        assert torch.allclose(out[b, sel], expected[0], atol=1e-6, rtol=0)
    assert int(info.n_routed) == int(decision.sum())


def test_causal_mode_without_a_causal_method_raises():
    net = make(cfg(), mod(causal="none"))
    with pytest.raises(ValueError, match="causal: none"):
        net(tokens(1, 8), routing="causal")


# ---------------------------------------------------------------- precision and compile
@pytest.mark.parametrize("variant", [VANILLA, mod(capacity=0.25, causal="predictor"),
                                     mod(capacity=0.25, causal="aux_loss")])
def test_bf16_autocast_forward_backward(variant):
    net = make(cfg(n_layers=2), variant)
    idx = tokens(2, 16)
    routings = ["topk"] if variant.kind == "vanilla" else ["topk", "causal"]
    for routing in routings:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = net(idx, idx, routing=routing)
        assert out.logits.dtype == torch.bfloat16 and torch.isfinite(out.loss)
        out.loss.backward()
    if variant.kind == "mod":  # router scores stay fp32 so top-k does not tie on bf16 steps
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert routed(net, 1).router_logits(torch.randn(2, 16, 32)).dtype == torch.float32


def test_topk_mode_compiles_without_graph_breaks():
    net = make(cfg(n_layers=2), mod(capacity=0.25, causal="predictor"))
    idx = tokens(2, 16)
    eager = net(idx, idx)
    compiled = torch.compile(net, backend="aot_eager", fullgraph=True)(idx, idx)
    compiled.loss.backward()
    assert torch.allclose(compiled.loss, eager.loss, atol=1e-5)
    assert torch.equal(compiled.stats["routed"], eager.stats["routed"])


def test_membership_is_per_row():
    idx = torch.tensor([[0, 2], [1, 3]])
    assert membership(idx, torch.zeros(2, 4)).tolist() == [[1, 0, 1, 0], [0, 1, 0, 1]]


# ---------------------------------------------------------------- the predictor apart from the LM
def test_routing_init_draws_nothing_from_the_lms_random_stream():
    """Routers and predictors come from their own generators: after building, the global RNG
    is where the vanilla model leaves it, and the LM's weights ignore predictor settings."""
    states, nets = [], []
    for variant in (VANILLA, mod(), mod(predictor_hidden=7), mod(causal="aux_loss")):
        nets.append(make(cfg(n_layers=4), variant, seed=5))
        states.append(torch.get_rng_state())
    assert all(torch.equal(s, states[0]) for s in states[1:])
    vanilla = nets[0].state_dict()
    for net in nets[1:]:  # every shared weight is the vanilla model's, bit for bit
        assert all(torch.equal(vanilla[k], v) for k, v in net.state_dict().items() if k in vanilla)
    a, b = nets[1].state_dict(), nets[2].state_dict()  # predictor width differs
    assert all(torch.equal(a[k], b[k]) for k in a if ".predictor." not in k)
    again = make(cfg(n_layers=4), mod(), seed=5).state_dict()  # and the seed fixes them all
    assert all(torch.equal(a[k], again[k]) for k in a)
    other = make(cfg(n_layers=4), mod(), seed=6).state_dict()
    assert not torch.equal(a["blocks.1.decision.predictor.0.weight"],
                           other["blocks.1.decision.predictor.0.weight"])


def test_predictor_parameters_are_exactly_the_predictors():
    net = make(cfg(n_layers=4), mod())
    names = {n for n, p in net.named_parameters()
             if any(p is q for q in net.predictor_parameters())}
    assert names == {f"blocks.{i}.decision.predictor.{j}.{w}" for i in (1, 3) for j in (0, 2)
                     for w in ("weight", "bias")}
    assert make(cfg(), mod(causal="aux_loss")).predictor_parameters() == []


def test_calibrated_thresholds_route_the_capacity_and_leave_the_lm_alone():
    """Layer by layer on the causal pass, each routed layer routes k/T of the calibration
    tokens; only the threshold buffers change (no parameter, no random draw)."""
    from modexp.training.calibrate import calibrate_thresholds

    for variant in (mod(capacity=0.25, route_every=1, threshold="calibrated"),
                    mod(capacity=0.25, causal="aux_loss", threshold="calibrated")):
        net = make(cfg(n_layers=4), variant)
        before = {k: v.clone() for k, v in net.state_dict().items()}
        idx, rng = tokens(8, 32), torch.get_rng_state()
        thresholds = calibrate_thresholds(net, [idx])
        assert torch.equal(torch.get_rng_state(), rng)
        after = net.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before if not k.endswith("threshold"))
        assert [float(after[f"blocks.{i}.decision.threshold"]) for i, _ in net.routed()] == thresholds
        assert all(t != 0 for t in thresholds)
        with torch.no_grad():
            out = net(idx, routing="causal")
        frac = out.stats["routed"].float() / out.stats["tokens"]  # k/T = 8/32 per layer
        torch.testing.assert_close(frac, torch.full_like(frac, 0.25), atol=1 / 256, rtol=0)


def test_thresholds_are_a_running_mean_of_the_training_batches_quantiles():
    """Tracked layers return each training batch's (1 - k/T) logit quantile; fold_thresholds
    averages a step's micro-batches, then keeps the mean of the last WINDOW steps."""
    from modexp.models.decision import quantile_threshold
    from modexp.training import calibrate

    net = make(cfg(n_layers=2), mod(capacity=0.25, route_every=2)).train()
    layer = net.blocks[1]
    out = net(tokens(4, 32))
    assert out.quantiles.shape == (1,) and float(layer.decision.threshold) == 0.0  # not folded
    seen, steps = [], 40
    for step in range(steps):
        qs, quantiles = [], []
        for _ in range(2):  # two micro-batches in this step
            idx = tokens(4, 32)
            quantiles.append(net(idx).quantiles)
            h = net.embed(idx)
            h = h + net.blocks[0].update(h, net.positions(32, h.device))  # dense layer 0
            qs.append(float(quantile_threshold(layer.decision.predict(h).detach(), 0.25)))
        calibrate.fold_thresholds(net, quantiles)
        seen.append(sum(qs) / 2)
        if step + 1 <= calibrate.WINDOW:  # the plain mean while the window fills
            assert float(layer.decision.threshold) == pytest.approx(sum(seen) / len(seen), abs=1e-5)
    expect = sum(seen[:calibrate.WINDOW]) / calibrate.WINDOW
    for q in seen[calibrate.WINDOW:]:
        expect += (q - expect) / calibrate.WINDOW
    assert float(layer.decision.threshold) == pytest.approx(expect, abs=1e-5)
    assert int(layer.decision.threshold_steps) == steps


@pytest.mark.parametrize("causal", ["predictor", "aux_loss"])
def test_decode_deciders_compare_against_the_threshold(causal):
    """decider (batch 1) and batch_decider decide as forward does: logit > threshold."""
    from modexp.kernels.decode import batch_decider, decider

    layer = routed(make(cfg(), mod(causal=causal, threshold="calibrated")), 1)
    x = torch.randn(64, 1, 32)
    logit = layer.decision.logit(x, layer.router_logits(x))[:, 0]
    with torch.no_grad():
        layer.decision.threshold.fill_(float(logit.median()))
    expected = logit > layer.decision.threshold
    clear = (logit - layer.decision.threshold).abs() > 1e-4  # away from float rounding at the boundary
    one, batch = decider(layer), batch_decider(layer)
    with torch.no_grad():  # as in generate (inference mode)
        got = [one(x[i:i + 1]) for i in range(64)]  # the router logit if routed, else None
        assert [g is not None for g, c in zip(got, clear) if c] == expected[clear].tolist()
        assert torch.equal(batch(x)[clear], expected[clear])
        r = layer.router_logits(x)[:, 0]  # the gate's input, handed to the residual add
        assert all(g == pytest.approx(float(r[i]), abs=1e-5) for i, g in enumerate(got) if g is not None)
    assert expected.any() and not expected.all()


def test_checkpoints_without_a_threshold_load_at_zero():
    net = make(cfg(), mod())
    state = {k: v for k, v in net.state_dict().items() if not k.endswith("threshold")}
    fresh = make(cfg(), mod())
    fresh.blocks[1].decision.threshold.fill_(3.0)
    fresh.load_state_dict(state)
    assert float(fresh.blocks[1].decision.threshold) == 0.0


def test_prefix_thresholds_blend_the_calibrated_one_with_the_prefixs_top_k():
    """threshold: prefix, position by position: (1 - w) theta + w * (the ceil(c n)-th largest of
    the n logits so far), w = n / (n + prior); decoding (PrefixRow) computes the same floats."""
    from functools import partial

    from modexp.kernels.decode import PrefixRow
    from modexp.models.decision import prefix_terms, prefix_thresholds

    logit = torch.randn(3, 40, generator=torch.Generator().manual_seed(0))
    theta, c, prior = torch.tensor(0.7), 0.125, 16
    got = prefix_thresholds(logit, c, theta, prior)
    for b in range(3):
        row = PrefixRow(partial(prefix_terms, frac=c, theta=float(theta), prior=prior), [])
        for i in range(40):
            n = i + 1
            q = logit[b, :n].sort(descending=True).values[math.ceil(c * n) - 1]
            w = n / (n + prior)
            assert float(got[b, i]) == pytest.approx((1 - w) * 0.7 + w * float(q), abs=1e-6)
            assert row.passes(float(logit[b, i])) == bool(logit[b, i] > got[b, i])  # same rule
            assert row.tau == float(got[b, i])  # the same float32 threshold, to the bit
    # a small chunk size changes nothing (long sequences are processed in blocks of rows)
    import modexp.models.decision as D
    old, D.ROWS_PER_CHUNK = D.ROWS_PER_CHUNK, 7
    try:
        assert torch.equal(prefix_thresholds(logit, c, theta, prior), got)
    finally:
        D.ROWS_PER_CHUNK = old


def test_prefix_decisions_in_decoding_equal_the_full_causal_forward():
    """Unrigged weights (decisions near the threshold too): the decode loop's prefix state,
    started from the prompt's logits, routes exactly the tokens the full causal forward routes."""
    from modexp.models.decode import generate

    for causal in ("aux_loss", "predictor"):
        net = make(cfg(n_layers=4), mod(causal=causal, capacity=0.25), seed=3).eval()
        for d in net.decisions():
            d.threshold.fill_(0.0)
        idx = tokens(2, 40, seed=5)
        seen = []
        hooks = [r.register_forward_hook(lambda m, a, out: seen.append(out[1].decision))
                 for _, r in net.routed()]
        with torch.no_grad():
            net(idx[:, :-1], routing="causal")
        for h in hooks:
            h.remove()
        for B in (1, 2):
            g = generate(net, idx[:B, :9], 31, feed=idx[:B, 9:])  # feeds idx[:, :-1] exactly
            for layer, full in enumerate(seen):
                assert torch.equal(g.routed[layer].T, full[:B, 9:]), (causal, B, layer)
            assert g.routed.any() and not g.routed.all()
