"""Rotary position embedding (RoPE, Su et al. 2021) from explicit integer positions.

Positions are explicit so the tokens a Mixture-of-Depths layer gathers keep their original
ones. The model's RoPE rotates the pairs (x_i, x_{i + hs/2}) of each head (the halves
convention: q and k rows of the projection laid out as [x1 | x2]) by angle pos * inv_freq_i.

Two ways to compute the same rotation:
- paired (fp32/fp64 eager, the CPU's training step, evaluation, decoding): the q and k rows of
  the projection weight are permuted on the fly so each rotated pair is adjacent (2i, 2i+1),
  and the rotation is one complex product per element, x * e^{i theta} (`_PairedRope`). The
  permutation is the same for q and k, so every score q . k and the attention output are
  those of the halves layout, up to float rounding; the weights, checkpoints and optimiser
  state keep the halves layout. Measured: training steps 2.5-3% faster than the halves formula
  (two products and two multiply-adds over strided halves), d 48 and d 256 on the CPU.
- halves (under autocast, e.g. bf16 on a GPU, where no bf16 complex type exists, and under
  torch.compile, which fuses the plain expression): `rope` on the halves as they are.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def pairs_adjacent(x: Tensor) -> bool:
    """Whether RoPE on x (a block's input or its q/k/v projection) takes the paired path."""
    return paired_path(x.dtype, x.device.type)


def paired_path(dtype: torch.dtype, device_type: str) -> bool:
    """The paired path: float32 or float64, eager (not traced by torch.compile), no autocast."""
    return (dtype in (torch.float32, torch.float64) and not torch.compiler.is_compiling()
            and not torch.is_autocast_enabled(device_type))


class Rotary(nn.Module):
    """RoPE tables cos and sin over positions 0..n-1 and the hs/2 frequencies, computed once and
    grown on demand (buffers outside the state_dict). A lookup is a gather of rows, where
    recomputing them cost a cos and a sin per layer."""

    def __init__(self, head_size: int, base: float, max_len: int = 1024):
        super().__init__()
        inv_freq = base ** (-torch.arange(0, head_size, 2, dtype=torch.float32) / head_size)
        self.register_buffer("inv_freq", inv_freq, persistent=False)  # (hs/2,)
        self.register_buffer("cos", torch.empty(0, head_size // 2), persistent=False)
        self.register_buffer("sin", torch.empty(0, head_size // 2), persistent=False)
        self.reserve(max_len)

    def reserve(self, n: int) -> None:
        """Tables for positions 0..n-1 at least (a Python check: no op when they exist)."""
        if n <= self.cos.size(0):
            return
        pos = torch.arange(n, device=self.inv_freq.device, dtype=torch.float32)
        theta = pos.unsqueeze(-1) * self.inv_freq  # (n, hs/2)
        self.cos, self.sin = theta.cos(), theta.sin()

    def lookup(self, pos: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """Tables (b, t, 1, hs/2) for positions pos (b, t): broadcast over heads."""
        b, t = pos.shape
        rows = pos.reshape(-1)  # index_select: a row copy, where advanced indexing is ~10x slower
        cos = self.cos.index_select(0, rows).view(b, t, 1, -1)
        sin = self.sin.index_select(0, rows).view(b, t, 1, -1)
        return cos.to(dtype), sin.to(dtype)

    def lookup_cis(self, pos: Tensor, dtype: torch.dtype) -> Tensor:
        """e^{i theta} = cos + i sin (b, t, 1, hs/2), complex, for positions pos (b, t) and a
        real dtype (float32 or float64): the paired path's table."""
        return torch.complex(*self.lookup(pos, dtype))


# ---------------------------------------------------------------- paired: one complex product
def paired_rows(n_heads: int, head_size: int, device=None) -> Tensor:
    """(3 d,) row order of the qkv weight for the paired path: in q and k, each head's rows
    [x1 | x2] become (x1_0, x2_0, x1_1, x2_1, ...); v's rows stay where they are."""
    d = n_heads * head_size
    within = torch.arange(head_size, device=device).view(2, -1).t().reshape(-1)  # 0, hs/2, 1, ...
    heads = torch.arange(2 * n_heads, device=device).unsqueeze(1) * head_size  # q's and k's heads
    qk = (heads + within).reshape(-1)  # (2 d,)
    return torch.cat((qk, torch.arange(2 * d, 3 * d, device=device)))


class _PermuteRows(torch.autograd.Function):
    """w.index_select(0, rows) for a permutation `rows`; backward: the inverse permutation (a
    gather, where index_select's backward is a scatter-add)."""

    @staticmethod
    def forward(ctx, w: Tensor, rows: Tensor, inverse: Tensor) -> Tensor:
        ctx.save_for_backward(inverse)
        return w.index_select(0, rows)

    @staticmethod
    def backward(ctx, g: Tensor):
        (inverse,) = ctx.saved_tensors
        return g.index_select(0, inverse), None, None


def rope_pairs(x: Tensor, cis: Tensor, out: Tensor | None = None) -> Tensor:
    """x (..., hs) with pairs (2i, 2i+1) adjacent, each rotated by cis (..., hs/2) (complex,
    broadcast): one complex product. out: a real tensor of x's shape to write into."""
    xc = torch.view_as_complex(x.unflatten(-1, (-1, 2)))  # (..., hs/2) complex view, no copy
    if out is None:
        return torch.view_as_real(xc * cis).flatten(-2)
    torch.mul(xc, cis, out=torch.view_as_complex(out.unflatten(-1, (-1, 2))))
    return out


class _PairedRope(torch.autograd.Function):
    """rope_pairs of q or k (B, t, nh, hs) into a (B, nh, t, hs)-contiguous buffer, returned as
    its (B, t, nh, hs) view (attention transposes it back into contiguous heads). Backward:
    the rotation back, a product with the conjugate."""

    @staticmethod
    def forward(ctx, x: Tensor, cis: Tensor) -> Tensor:
        ctx.save_for_backward(cis)
        B, t, nh, hs = x.shape
        out = torch.empty(B, nh, t, hs, dtype=x.dtype, device=x.device).transpose(1, 2)
        return rope_pairs(x, cis, out)

    @staticmethod
    def backward(ctx, g: Tensor):
        (cis,) = ctx.saved_tensors
        if g.stride(-1) != 1 or any(s % 2 for s in g.stride()[:-1]):  # not viewable as complex
            g = g.contiguous()
        return rope_pairs(g, cis.conj()), None


# ---------------------------------------------------------------- halves: the plain formula
def rope(x: Tensor, cos: Tensor, sin: Tensor, out: Tensor | None = None,
         sign: float = 1.0) -> Tensor:
    """Rotate the pairs (x1_i, x2_i) of x's last dim (halves x1, x2) by each token's angle.

    (x1 cos - x2 sin, x2 cos + x1 sin) for sign 1, the rotation back for -1 (RoPE's backward:
    a rotation's transpose is its inverse). cos, sin (..., hs/2) broadcast against the halves.
    Written as two products and two fused multiply-adds (addcmul) over the halves: the textbook
    x * [cos, cos] + rotate_half(x) * [-sin, sin] makes four full passes and a concatenated
    copy. The fused multiply-add rounds once: values may differ from it in the last bit.
    out: where to write (e.g. a transposed view, so attention gets contiguous heads).
    """
    h = x.size(-1) // 2
    x1, x2 = x[..., :h], x[..., h:]
    if torch.compiler.is_compiling():  # no strided out= in a traced graph; Inductor fuses this
        return torch.cat((x1 * cos - sign * x2 * sin, x2 * cos + sign * x1 * sin), dim=-1)
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device) if out is None else out
    if h < 8:  # halves narrower than one AVX2 vector: strided loops lose; whole rows, a copy
        cos2, sin2 = torch.cat((cos, cos), dim=-1), torch.cat((-sign * sin, sign * sin), dim=-1)
        return torch.mul(x, cos2, out=out).addcmul_(torch.cat((x2, x1), dim=-1), sin2)
    o1, o2 = out[..., :h], out[..., h:]
    torch.mul(x1, cos, out=o1)
    o1.addcmul_(x2, sin, value=-sign)
    torch.mul(x2, cos, out=o2)
    o2.addcmul_(x1, sin, value=sign)
    return out


class _Rope(torch.autograd.Function):
    """rope of one of q or k (B, t, nh, hs) into a (B, nh, t, hs)-contiguous buffer, returned
    as its (B, t, nh, hs) view: attention transposes it back into contiguous heads (measured
    faster in SDPA's forward and backward). Backward: the rotation back."""

    @staticmethod
    def forward(ctx, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        ctx.save_for_backward(cos, sin)
        B, t, nh, hs = x.shape
        out = torch.empty(B, nh, t, hs, dtype=x.dtype, device=x.device).transpose(1, 2)
        return rope(x, cos, sin, out)

    @staticmethod
    def backward(ctx, g: Tensor):
        cos, sin = ctx.saved_tensors
        return rope(g, cos, sin, sign=-1.0), None, None
