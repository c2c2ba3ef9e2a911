"""The hand-written backward passes of the training step's hot paths against autograd's own.

modexp/kernels/: rope._Rope, norm._RMSNormCPU and gather._GatherRows replace autograd's
generic derivatives for speed; gradcheck (float64, finite differences) and a comparison with
the textbook expressions catch a wrong transpose, a missing term or a dropped gradient. Short
sequences train through attention.matmul_attention instead of SDPA: checked against SDPA's
values and gradients.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from modexp.kernels.gather import gather_rows
from modexp.kernels.norm import _RMSNormCPU, rms_norm
from modexp.kernels.rope import _Rope, rope
from modexp.models.rope import Rotary


def tables(rotary, pos, dtype):
    """cos, sin (b, t, 1, hs/2) at positions pos (b, t): broadcast over heads."""
    p = rotary.at(pos)
    return p.cos.unsqueeze(2).to(dtype), p.sin.unsqueeze(2).to(dtype)


def textbook_rope(x, pos, rotary):
    """x (b, t, nh, hs) rotated pairwise (x1_i, x2_i) by pos * inv_freq_i."""
    theta = pos.unsqueeze(-1).to(torch.float32) * rotary.inv_freq  # (b, t, hs/2)
    cos, sin = theta.cos()[:, :, None], theta.sin()[:, :, None]
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


@pytest.mark.parametrize("hs", [8, 32])  # halves under / over one AVX2 vector: both code paths
def test_rope_tables_rotate_like_the_textbook_expression(hs):
    rotary = Rotary(hs, 10000.0, max_len=4)
    pos = torch.tensor([[0, 3, 17, 40]])  # beyond max_len: the table grows
    rotary.reserve(41)
    x = torch.randn(1, 4, 2, hs)
    cos, sin = tables(rotary, pos, x.dtype)
    want = textbook_rope(x, pos, rotary)
    torch.testing.assert_close(rope(x, cos, sin), want, rtol=0, atol=1e-5)  # fused mul-add: last bit
    # the training path (into a head-major buffer) computes the same values as eval's
    xg = x.clone().requires_grad_()
    assert torch.equal(_Rope.apply(xg, cos, sin), rope(x, cos, sin))
    assert _Rope.apply(xg, cos, sin).transpose(1, 2).is_contiguous()  # (b, nh, t, hs) for SDPA
    back = rope(rope(x, cos, sin), cos, sin, sign=-1.0)  # the rotation back undoes it
    torch.testing.assert_close(back, x, rtol=0, atol=1e-5)
    assert "cos" not in rotary.state_dict()  # tables are derived, never saved


@pytest.mark.parametrize("hs", [8, 32])
def test_rope_backward_is_the_inverse_rotation(hs):
    rotary = Rotary(hs, 100.0, 1024).double()
    rotary.reserve(16)
    cos, sin = tables(rotary, torch.tensor([[1, 5, 9]]), torch.float64)
    x = torch.randn(2, 3, 2, hs, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: _Rope.apply(x, cos, sin), (x,))


def test_rms_norm_cpu_matches_f_rms_norm_values_and_gradients():
    norm = nn.RMSNorm(16)
    with torch.no_grad():
        norm.weight.normal_(1.0, 0.3)
    x = torch.randn(3, 5, 16, requires_grad=True)
    ours = rms_norm(x, norm.weight, norm.eps)
    ref = F.rms_norm(x, (16,), norm.weight, None)
    assert torch.equal(ours, ref)  # forward op for op as F.rms_norm
    g = torch.randn_like(ref)
    got = torch.autograd.grad(ours, (x, norm.weight), g)
    want = torch.autograd.grad(ref, (x, norm.weight), g)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    xd = torch.randn(2, 4, 6, dtype=torch.float64, requires_grad=True)
    wd = torch.randn(6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w: _RMSNormCPU.apply(x, w, 1e-6), (xd, wd))


def test_gather_rows_gradient_equals_index_select():
    x = torch.randn(10, 4, requires_grad=True)
    rows = torch.tensor([7, 0, 3, 9])
    g = torch.randn(4, 4)
    got = torch.autograd.grad(gather_rows(x, rows), x, g)[0]
    want = torch.autograd.grad(x.index_select(0, rows), x, g)[0]
    assert torch.equal(got, want)
    assert got[[1, 2, 4, 5, 6, 8]].abs().sum() == 0


# ---------------------------------------------------------------- RoPE's paired path (rope.py)
def test_paired_rows_put_each_rotated_pair_side_by_side():
    from modexp.kernels.rope import paired_rows

    rows = paired_rows(n_heads=2, head_size=4)  # d 8: q rows 0-7, k rows 8-15, v rows 16-23
    assert rows.tolist() == [0, 2, 1, 3, 4, 6, 5, 7,  # q: head 0 (x1_0, x2_0, x1_1, x2_1), head 1
                             8, 10, 9, 11, 12, 14, 13, 15,  # k alike
                             *range(16, 24)]  # v untouched
    assert sorted(rows.tolist()) == list(range(24))  # a permutation


@pytest.mark.parametrize("hs", [6, 32])
def test_paired_attention_equals_the_halves_layout(hs, monkeypatch):
    """The paired path (permuted q/k rows, one complex product) computes the attention the
    halves formula computes, forward and backward, in training and in evaluation."""
    import modexp.kernels.rope as K
    from modexp.models.block import Attention
    from modexp.models.build import choose_kernels
    from modexp.spec import ModelConfig

    attn = Attention(ModelConfig(name="t", n_layers=1, d_model=2 * hs, n_heads=2), choose_kernels("cpu"))
    x = torch.randn(3, 9, 2 * hs)
    # gathered tokens keep their positions
    pos = Rotary(hs, 10000.0, 32).at(torch.tensor([[0, 2, 3, 7, 8, 11, 12, 20, 31]]))
    g = torch.randn(3, 9, 2 * hs)

    def run(paired: bool):
        monkeypatch.setattr(K, "paired_path", lambda dtype, device: paired)
        attn.zero_grad()
        y = attn(x, pos)
        y.backward(g)
        with torch.no_grad():
            y_eval = attn(x, pos)
        return y.detach(), attn.qkv.weight.grad.clone(), y_eval

    got, want = run(True), run(False)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert not torch.equal(got[0], attn.proj(x).detach())  # the attention did something


def test_paired_rope_backward_is_the_inverse_rotation():
    from modexp.kernels.rope import QKVRope, _PairedRope

    rotary = Rotary(8, 100.0, 1024).double()
    rotary.reserve(16)
    p = rotary.at(torch.tensor([[1, 5, 9]]))
    cis = QKVRope().cis(p.cos, p.sin, torch.float64)
    assert cis.dtype == torch.complex128
    x = torch.randn(2, 3, 2, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: _PairedRope.apply(x, cis), (x,))


def test_permuted_rows_gradient_equals_index_select():
    from modexp.kernels.rope import _PermuteRows

    w = torch.randn(6, 3, requires_grad=True)
    rows = torch.tensor([2, 0, 5, 1, 4, 3])
    g = torch.randn(6, 3)
    got = torch.autograd.grad(_PermuteRows.apply(w, rows, torch.argsort(rows)), w, g)[0]
    want = torch.autograd.grad(w.index_select(0, rows), w, g)[0]
    assert torch.equal(got, want)


def test_paired_weight_follows_every_update_and_decoding_binds_it_once():
    """No stale permuted weight: evaluation permutes the current weight (fused AdamW writes in
    place without bumping the version counter, so no cache may key on it); generate() binds
    one copy for the generation and lets it go."""
    from modexp.kernels.rope import paired_rows
    from modexp.models.build import build_model
    from modexp.models.decode import generate
    from modexp.spec import ModelConfig, VanillaVariant

    net = build_model(ModelConfig(name="t", n_layers=1, d_model=16, n_heads=2),
                      VanillaVariant(kind="vanilla"), 32)
    attn = net.blocks[0].attn
    kernel = net.kernels.qkv_rope.__self__  # the model's QKVRope: its bindings
    paired_weight = lambda m: kernel.paired_weight(m.qkv.weight, m.n_heads)  # noqa: E731
    opt = torch.optim.AdamW(net.parameters(), lr=0.1, fused=True)
    with torch.no_grad():
        before = paired_weight(attn)
    net(torch.randint(0, 32, (2, 8)), torch.randint(0, 32, (2, 8))).loss.backward()
    opt.step()
    with torch.no_grad():
        after = paired_weight(attn)
    assert not torch.equal(after, before)
    assert torch.equal(after, attn.qkv.weight.detach()[paired_rows(2, 8)])
    seen = []
    attn.register_forward_pre_hook(lambda m, args: seen.append(paired_weight(m)))
    generate(net, torch.randint(0, 32, (1, 4)), 3)
    assert all(b is seen[0] for b in seen) and torch.equal(seen[0], after)
    assert not kernel.bound


# ---------------------------------------------------------------- matmul attention (attention.py)
@pytest.mark.parametrize("t,hs", [(1, 6), (2, 6), (17, 6), (64, 8), (65, 24), (128, 64)])
def test_matmul_attention_equals_sdpa_values_and_gradients(t, hs):
    """One block up to t 64, two causal query blocks above: SDPA's values and gradients."""
    from modexp.kernels.attention import matmul_attention, query_blocks

    assert len(query_blocks(t)) == (1 if t <= 64 else 2)
    q, k, v = (torch.randn(3, 2, t, hs, requires_grad=True) for _ in range(3))
    want = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    got = matmul_attention(q, k, v)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(want)
    grads_want = torch.autograd.grad(want, (q, k, v), g)
    grads_got = torch.autograd.grad(got, (q, k, v), g)
    for a, b in zip(grads_got, grads_want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    # causal: the first query sees only the first key, so its output is v's first row
    torch.testing.assert_close(got[:, :, 0], v[:, :, 0], rtol=0, atol=1e-6)


def test_query_blocks_cover_every_query_once_and_see_only_earlier_keys():
    from modexp.kernels.attention import query_blocks

    for t in (1, 64, 65, 100, 128):
        blocks = query_blocks(t)
        assert [a for a, _ in blocks] == [0] + [e for _, e in blocks[:-1]] and blocks[-1][1] == t


def test_training_takes_matmul_attention_and_evaluation_sdpa(monkeypatch):
    from modexp.kernels import attention as A
    from modexp.models.build import build_model
    from modexp.spec import ModelConfig, VanillaVariant

    seen = []
    real = A.matmul_attention
    monkeypatch.setattr(A, "matmul_attention", lambda *a: seen.append(a[0].shape) or real(*a))
    # hs 8 and 64 train through matmuls; hs 128 and sequences over 128 keep SDPA
    for d, T, matmul in ((16, 12, True), (128, 12, True), (256, 12, False), (16, 129, False)):
        torch.manual_seed(0)
        net = build_model(ModelConfig(name="t", n_layers=1, d_model=d, n_heads=2),
                          VanillaVariant(kind="vanilla"), 32)
        idx = torch.randint(0, 32, (2, T))
        seen.clear()
        train = net(idx, idx).loss
        assert bool(seen) == matmul, (d, T)
        seen.clear()
        with torch.no_grad():
            evaluated = net(idx, idx).loss
        assert not seen  # no gradient: SDPA, as decoding
        torch.testing.assert_close(train, evaluated, rtol=1e-6, atol=1e-6)
    q = torch.randn(1024, 2, 128, 8, requires_grad=True)  # 2^25 scores: too many to keep
    assert not A.matmul_path(q) and A.matmul_path(q[:64])
