"""Every kernel (modexp/kernels/) against the plain-PyTorch reference it replaces
(modexp/models/ops.REFERENCE), values and gradients; and modexp with modexp.kernels gone.

A kernel may round differently from the reference (a fused multiply-add, a complex product,
another summation order), never compute something else: a wrong transpose, a dropped term, a
stale weight or another routing decision fails here.
"""

from __future__ import annotations

import dataclasses
import sys

import pytest
import torch

from modexp.models import ops
from modexp.models.build import build_model, choose_kernels
from modexp.models.decode import generate
from modexp.models.rope import Rotary, qkv_rope
from modexp.spec import ModelConfig, ModVariant, VanillaVariant

KERNELS = choose_kernels("cpu")
CFG = ModelConfig(name="t", n_layers=4, d_model=32, n_heads=2)
V = 64
VARIANTS = {"vanilla": VanillaVariant(kind="vanilla"),
            "predictor": ModVariant(kind="mod", capacity=0.25, causal="predictor"),
            "aux_loss": ModVariant(kind="mod", capacity=0.25, causal="aux_loss")}


def close(a, b, tol: float = 1e-5) -> None:
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def grads(fn, inputs: tuple, seed: int = 0) -> tuple:
    """fn's outputs and the gradients of a random projection of them w.r.t. inputs."""
    out = fn(*inputs)
    out = out if isinstance(out, tuple) else (out,)
    g = torch.Generator().manual_seed(seed)
    loss = sum((o * torch.randn(o.shape, generator=g, dtype=o.dtype)).sum() for o in out)
    return tuple(o.detach() for o in out), torch.autograd.grad(loss, inputs)


def test_the_cpu_chooses_a_kernel_for_every_hot_spot():
    """A field left at the reference would run slower without any test noticing."""
    for f in dataclasses.fields(ops.Kernels):
        if f.name != "name":
            assert getattr(KERNELS, f.name) is not getattr(ops.REFERENCE, f.name), f.name
    assert KERNELS.name == "cpu"


def test_rms_norm_kernel_equals_the_reference():
    x = torch.randn(3, 5, 16, requires_grad=True)
    w = (1 + 0.3 * torch.randn(16)).requires_grad_()
    (want,), dwant = grads(lambda x, w: ops.rms_norm(x, w, None), (x, w))
    (got,), dgot = grads(lambda x, w: KERNELS.rms_norm(x, w, None), (x, w))
    assert torch.equal(got, want)  # the forward is F.rms_norm's, op for op
    for a, b in zip(dgot, dwant):
        close(a, b)
    with torch.no_grad():  # evaluation: F.rms_norm itself
        assert torch.equal(KERNELS.rms_norm(x, w, 1e-6), ops.rms_norm(x, w, 1e-6))


@pytest.mark.parametrize("hs", [6, 32])  # halves under / over one AVX2 vector: both code paths
@pytest.mark.parametrize("paired", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_qkv_rope_kernel_equals_the_textbook_rope(hs, paired, dtype, monkeypatch):
    """The paired path (permuted weight rows, one complex product) and the halves path (two
    fused multiply-adds, hand-written backward) compute the textbook rotation's q, k, v and
    gradients, in training and without a gradient, at gathered (non-contiguous) positions.
    The paired path's q and k come with each head's pairs side by side: put back in halves
    order here (the scores q . k do not depend on the order)."""
    import modexp.kernels.rope as K

    monkeypatch.setattr(K, "paired_path", lambda dt, dev: paired)
    n_heads, d = 2, 2 * hs
    rotary = Rotary(hs, 10000.0, 64).to(dtype)
    pos = rotary.at(torch.tensor([[0, 2, 3, 7, 8, 11, 12, 20, 31]]))
    x = torch.randn(3, 9, d, dtype=dtype, requires_grad=True)
    w = (torch.randn(3 * d, d, dtype=dtype) / d ** 0.5).requires_grad_()
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    halves = torch.argsort(torch.arange(hs).view(2, -1).t().reshape(-1))  # paired -> halves

    def mine(x, w):
        q, k, v = KERNELS.qkv_rope(x, w, pos.cos, pos.sin, n_heads)
        return (q[..., halves], k[..., halves], v) if paired else (q, k, v)

    ref = lambda x, w: qkv_rope(x, w, pos.cos, pos.sin, n_heads)  # noqa: E731
    (want, dwant), (got, dgot) = grads(ref, (x, w)), grads(mine, (x, w))
    for a, b in zip(got + dgot, want + dwant):
        close(a, b, tol)
    with torch.no_grad():  # evaluation and decoding: q and k rotated in one pass
        for a, b in zip(mine(x, w), want):
            close(a, b, tol)
    assert not torch.equal(want[0], x.detach().view(3, 9, 2, hs).transpose(1, 2))  # it rotated


def test_attention_kernel_equals_sdpa():
    """Training (the matmul path, one and two query blocks), and masks or no gradient (SDPA)."""
    for t, hs in ((17, 8), (96, 24)):
        q, k, v = (torch.randn(2, 2, t, hs, requires_grad=True) for _ in range(3))
        want, dwant = grads(lambda *a: ops.attention(*a, None, True), (q, k, v))
        got, dgot = grads(lambda *a: KERNELS.attention(*a, None, True), (q, k, v))
        for a, b in zip(got + dgot, want + dwant):
            close(a, b)
        mask = torch.rand(2, 1, t, t) < 0.7
        mask |= torch.eye(t, dtype=torch.bool)  # every query sees a key
        close(KERNELS.attention(q, k, v, mask, False), ops.attention(q, k, v, mask, False))


def test_gather_kernel_equals_index_select():
    x = torch.randn(10, 4, requires_grad=True)
    rows = torch.tensor([7, 0, 3, 9])
    (got,), (dgot,) = grads(lambda x: KERNELS.gather_rows(x, rows), (x,))
    (want,), (dwant,) = grads(lambda x: ops.gather_rows(x, rows), (x,))
    assert torch.equal(got, want) and torch.equal(dgot, dwant)


def pair(variant, seed: int = 0):
    """The same model twice (same seed, same weights): on the CPU kernels, on the reference."""
    nets = []
    for kernels in (KERNELS, ops.REFERENCE):
        torch.manual_seed(seed)
        nets.append(build_model(CFG, variant, V, kernels=kernels).eval())
    return nets


@pytest.mark.parametrize("name", list(VARIANTS))
def test_the_model_on_kernels_computes_the_reference_model(name):
    """Training loss and gradients, evaluation with top-k and causal routing."""
    fast, ref = pair(VARIANTS[name])
    idx = torch.randint(0, V, (3, 40), generator=torch.Generator().manual_seed(1))
    for net in (fast, ref):
        net.train()(idx, idx).loss.backward()
    close(fast(idx, idx).loss, ref(idx, idx).loss)
    for (n, a), (_, b) in zip(fast.named_parameters(), ref.named_parameters()):
        close(a.grad, b.grad)
    with torch.no_grad():
        for routing in ("topk", "causal") if name != "vanilla" else ("topk",):
            a, b = fast.eval()(idx, idx, routing=routing), ref.eval()(idx, idx, routing=routing)
            close(a.logits, b.logits)
            assert all(torch.equal(a.stats[k], b.stats[k]) for k in a.stats)  # same routing


@pytest.mark.parametrize("name", ["predictor", "aux_loss"])
@pytest.mark.parametrize("threshold", ["prefix", "calibrated"])
@pytest.mark.parametrize("B", [1, 3])
def test_the_fast_decoder_makes_the_reference_decisions(name, threshold, B):
    """Unrigged weights, a threshold inside the logits (decisions near it too): the kernels'
    decode loop (Python-float decisions at batch 1, bound weights) routes exactly the tokens
    the reference decoder routes, which are those of the full causal forward."""
    variant = VARIANTS[name].model_copy(update={"threshold": threshold})
    fast, ref = pair(variant, seed=3)
    for net in (fast, ref):
        for d in net.decisions():
            d.set_threshold(0.0)
    from tests.test_sample import causal_decisions

    idx = torch.randint(0, V, (B, 40), generator=torch.Generator().manual_seed(5))
    _, seen = causal_decisions(ref, idx[:, :-1])
    a = generate(fast, idx[:, :9], 31, feed=idx[:, 9:], keep_logits=True)
    b = generate(ref, idx[:, :9], 31, feed=idx[:, 9:], keep_logits=True)
    assert torch.equal(a.routed, b.routed)
    for layer, full in enumerate(seen):
        assert torch.equal(b.routed[layer].T, full[:, 9:])
    assert a.routed.any() and not a.routed.all()
    close(torch.stack(a.logits), torch.stack(b.logits))


@pytest.mark.parametrize("name", ["vanilla", "predictor"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("B", [1, 3])
def test_the_fast_decoder_computes_the_reference_decoders_logits(name, dtype, B):
    """The bound-weight decode step (the block's ops without its submodules' calls) for a
    SwiGLU model with tied embeddings, fp32 and fp64: the reference decoder's logits."""
    from tests.test_sample import rig

    cfg = CFG.model_copy(update={"mlp": "swiglu", "tie_embeddings": True})
    nets = []
    for kernels in (KERNELS, ops.REFERENCE):
        torch.manual_seed(0)
        nets.append(rig(build_model(cfg, VARIANTS[name], V, kernels=kernels).to(dtype).eval()))
    idx = torch.randint(0, V, (B, 24), generator=torch.Generator().manual_seed(4))
    a, b = (generate(net, idx[:, :6], 18, feed=idx[:, 6:], keep_logits=True) for net in nets)
    close(torch.stack(a.logits), torch.stack(b.logits), 1e-5 if dtype == torch.float32 else 1e-10)
    if name != "vanilla":
        assert torch.equal(a.routed, b.routed) and a.routed.any() and not a.routed.all()


def test_prefix_rows_compute_the_decisions_thresholds_to_the_bit():
    """kernels' PrefixRow (Python floats, one token at a time) against the Decision's own
    decode state: the same float32 threshold for every token of every row."""
    from modexp.kernels.decode import PrefixRow

    net = build_model(CFG, VARIANTS["aux_loss"], V)
    decision = net.decisions()[0]
    decision.set_threshold(0.3)
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(0))
    state = decision.begin(logits[:, :7])
    rows = [PrefixRow(decision.prefix_terms, p) for p in logits[:, :7].tolist()]
    for i in range(7, 50):
        want = decision.decide_next(logits[:, i:i + 1], state)
        for b, row in enumerate(rows):
            assert row.passes(float(logits[b, i])) == bool(want[b])
            full = decision.thresholds(logits[b:b + 1, :i + 1])[0, -1]
            assert row.tau == float(full)  # the full forward's threshold at that position


def test_without_kernels_modexp_trains_evaluates_and_decodes(monkeypatch):
    """modexp.kernels made unimportable (as if deleted): every model runs on the reference,
    and a few training steps, a causal evaluation and a cached decode match the kernels'."""
    from tests.test_sample import rig

    variant = VARIANTS["predictor"]
    torch.manual_seed(0)
    fast = build_model(CFG, variant, V)
    monkeypatch.setitem(sys.modules, "modexp.kernels", None)  # import modexp.kernels now fails
    assert choose_kernels("cpu") is ops.REFERENCE
    torch.manual_seed(0)
    ref = build_model(CFG, variant, V)
    assert ref.kernels is ops.REFERENCE and all(b.kernels is ops.REFERENCE for b in ref.blocks)
    g = torch.Generator().manual_seed(2)
    batches = [torch.randint(0, V, (4, 33), generator=g) for _ in range(4)]
    losses = {}
    for key, net in (("fast", fast), ("ref", ref)):
        opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
        losses[key] = []
        for b in batches:
            out = net(b[:, :-1], b[:, 1:])
            out.loss.backward()
            opt.step()
            opt.zero_grad()
            losses[key].append(float(out.loss.detach()))
    assert losses["fast"] == pytest.approx(losses["ref"], rel=1e-4)
    for net in (fast, ref):
        rig(net.eval())
    with torch.no_grad():
        a, b = (net(batches[0][:, :-1], batches[0][:, 1:], routing="causal") for net in (fast, ref))
    close(a.lm_loss, b.lm_loss, 1e-4)
    for k in ("routed", "pred_tp", "pred_fp"):
        assert torch.equal(a.stats[k], b.stats[k])
    prompt, feed = batches[1][:2, :6], batches[1][:2, 6:]
    a, b = (generate(net, prompt, 20, feed=feed, keep_logits=True) for net in (fast, ref))
    assert torch.equal(a.routed, b.routed) and a.routed.any() and not a.routed.all()
    close(torch.stack(a.logits), torch.stack(b.logits), 1e-4)


def test_without_kernels_a_sweep_runs_and_samples(write_spec, tmp_path, monkeypatch):
    """`modexp run` and `modexp sample` with modexp.kernels unimportable; the losses of a run
    with it, to what rounding differences grow to over a run whose top-k choices they move."""
    from modexp.runs.sample import sample_run
    from modexp.runs.metrics import read_json
    from modexp.runs.runner import run_sweep
    from tests.conftest import TINY

    spec = write_spec(variants={"mod": TINY["variants"]["mod"]})
    run_sweep(spec, tmp_path / "fast")
    monkeypatch.setitem(sys.modules, "modexp.kernels", None)
    run_sweep(spec, tmp_path / "ref")
    a, b = (read_json(tmp_path / d / "tiny" / "2e9-xs-mod-s0" / "summary.json") for d in ("fast", "ref"))
    for k in ("final_eval_loss", "final_eval_loss_causal"):
        assert a[k] == pytest.approx(b[k], rel=1e-2)
    res = sample_run(tmp_path / "ref" / "tiny" / "2e9-xs-mod-s0", "def f(x):", max_new_tokens=8,
                     device="cpu")
    assert len(res.tokens) == 8 and list(res.routed_frac) == [1]
