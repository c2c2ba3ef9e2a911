"""The hand-written backward passes of the training step's hot paths against autograd's own.

model._Rope, model._RMSNormCPU and mod._GatherRows replace autograd's generic derivatives for
speed; gradcheck (float64, finite differences) and a comparison with the textbook expressions
catch a wrong transpose, a missing term or a dropped gradient.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from modexp.models.mod import gather_rows
from modexp.models.model import Rotary, _Rope, _RMSNormCPU, rms_norm, rope


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
    cos, sin = rotary.lookup(pos, x.dtype)
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
    rotary = Rotary(hs, 100.0).double()
    rotary.reserve(16)
    cos, sin = rotary.lookup(torch.tensor([[1, 5, 9]]), torch.float64)
    x = torch.randn(2, 3, 2, hs, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: _Rope.apply(x, cos, sin), (x,))


def test_rms_norm_cpu_matches_f_rms_norm_values_and_gradients():
    norm = nn.RMSNorm(16)
    with torch.no_grad():
        norm.weight.normal_(1.0, 0.3)
    x = torch.randn(3, 5, 16, requires_grad=True)
    ours = rms_norm(norm, x)
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
