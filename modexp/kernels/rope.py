"""The q/k/v projection with RoPE (modexp.models.rope.qkv_rope), computed two faster ways.

The model's RoPE rotates the pairs (x_i, x_{i + hs/2}) of each head (the halves layout of the
q and k rows of the projection weight) by angle pos * inv_freq_i.

- paired (fp32/fp64 eager: the CPU's training step, evaluation, decoding): the q and k rows
  of the projection weight are permuted on the fly so each rotated pair is adjacent
  (2i, 2i+1), and the rotation is one complex product per element, x * e^{i theta}
  (`_PairedRope`). The permutation is the same for q and k, so every score q . k and the
  attention output are those of the halves layout, up to float rounding; the weights,
  checkpoints and optimiser state keep the halves layout. While a generation runs, the
  permuted weights are bound once (`binding`): no cache keyed on a weight's version, since
  fused AdamW updates in place without bumping it.
- halves (under autocast, e.g. bf16, which has no complex type, and under torch.compile,
  which fuses the plain expression): `rope` on the halves as they are, two products and two
  fused multiply-adds written straight into a head-major buffer (`_Rope`, whose backward is
  the rotation back).

Both write q and k into (B, nh, t, hs)-contiguous buffers returned as (B, t, nh, hs) views,
so attention gets contiguous heads after its transpose.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor


def paired_path(dtype: torch.dtype, device_type: str) -> bool:
    """The paired path: float32 or float64, eager (not traced by torch.compile), no autocast."""
    return (dtype in (torch.float32, torch.float64) and not torch.compiler.is_compiling()
            and not torch.is_autocast_enabled(device_type))


class QKVRope:
    """qkv_rope for one model: the row permutations per shape, the permuted weights a
    generation binds, and the last angles made complex (every layer of a pass shares them)."""

    def __init__(self):
        self._rows: dict[tuple, tuple[Tensor, Tensor]] = {}  # (nh, hs, device) -> rows, inverse
        self.bound: dict[int, tuple[Tensor, Tensor]] = {}  # id(weight) -> (weight, permuted)
        # id(cos) -> (cos, sin, dtype, cis): the angles a generation binds, and the last made
        self.tables: dict[int, tuple[Tensor, Tensor, torch.dtype, Tensor]] = {}
        self._cis: tuple[Tensor, Tensor, torch.dtype, Tensor] | None = None

    def qkv_rope(self, x: Tensor, weight: Tensor, cos: Tensor, sin: Tensor,
                 n_heads: int) -> tuple[Tensor, Tensor, Tensor]:
        """q, k, v (B, nh, t, hs) of x (B, t, d): modexp.models.rope.qkv_rope's values."""
        B, t, _ = x.shape
        paired = paired_path(x.dtype, x.device.type)
        w = self.paired_weight(weight, n_heads) if paired else weight
        qkv = F.linear(x, w).view(B, t, 3, n_heads, -1)  # as the projection module computes it
        grad = torch.is_grad_enabled() and qkv.requires_grad
        if paired:  # q and k rows arrive paired
            cis = self.cis(cos, sin, qkv.dtype)  # (b, t, 1, hs/2)
            one = lambda h: _PairedRope.apply(h, cis)  # noqa: E731  (q or k, with a gradient)
            both = lambda qk: rope_pairs(qk, cis.unsqueeze(2))  # noqa: E731  (q and k together)
        else:
            cos, sin = cos.unsqueeze(2).to(qkv.dtype), sin.unsqueeze(2).to(qkv.dtype)
            rot = rope if torch.compiler.is_compiling() else _Rope.apply  # compiled: autograd's
            one = lambda h: rot(h, cos, sin)  # noqa: E731
            both = lambda qk: rope(qk, cos.unsqueeze(2), sin.unsqueeze(2))  # noqa: E731
        if grad:
            # unbind's backward stacks the three grads (slices would zero-fill and copy them)
            q, k, v = qkv.unbind(2)  # (B, t, nh, hs)
            q, k = one(q), one(k)
        else:  # no gradient (eval, decode): q and k in one pass, fewer ops per token
            q, k = both(qkv[:, :, :2]).unbind(2)
            v = qkv[:, :, 2]
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, nh, t, hs)

    def paired_weight(self, weight: Tensor, n_heads: int) -> Tensor:
        """The qkv weight with its q and k rows permuted for the paired path: the copy bound
        for this generation, or a differentiable copy while training, or a plain one."""
        hit = self.bound.get(id(weight))
        if hit is not None and hit[0] is weight:
            return hit[1]
        return self.permute(weight, n_heads)

    def permute(self, weight: Tensor, n_heads: int) -> Tensor:
        """weight's rows in paired order, made now (from the weight as it is)."""
        key = (n_heads, weight.size(1) // n_heads, weight.device)
        if key not in self._rows:
            rows = paired_rows(*key)
            self._rows[key] = (rows, torch.argsort(rows))  # the order and its inverse
        if torch.is_grad_enabled() and weight.requires_grad:
            return _PermuteRows.apply(weight, *self._rows[key])
        return weight.index_select(0, self._rows[key][0])

    def cis(self, cos: Tensor, sin: Tensor, dtype: torch.dtype) -> Tensor:
        """e^{i theta} = cos + i sin (b, t, 1, hs/2), complex, for angle tables (b, t, hs/2):
        made once for the tables every dense layer of a pass shares, or bound for a generation.
        The entries hold their tables, so no other tensor can take their identity."""
        for hit in (self.tables.get(id(cos)), self._cis):
            if hit is not None and hit[0] is cos and hit[1] is sin and hit[2] == dtype:
                return hit[3]
        cis = torch.complex(cos.to(dtype), sin.to(dtype)).unsqueeze(2)
        self._cis = (cos, sin, dtype, cis)
        return cis

    @contextmanager
    def binding(self, weights: list[tuple[Tensor, int]], positions: list, dtype: torch.dtype):
        """Within: each (qkv weight, n_heads)'s permuted copy, and the complex angles of every
        position (Positions (1, 1) each, views of one table), made once, not per token. The
        weights must not change meanwhile (a generation runs in inference mode)."""
        for w, n_heads in weights:
            self.bound[id(w)] = (w, self.permute(w, n_heads))
        if positions:  # one complex table, split per position as the positions are
            cis = torch.complex(*(torch.cat([getattr(p, f) for p in positions], 1).to(dtype)
                                  for f in ("cos", "sin")))
            for p, c in zip(positions, cis.unsqueeze(2).split(1, dim=1)):
                self.tables[id(p.cos)] = (p.cos, p.sin, dtype, c)
        try:
            yield
        finally:
            self.bound.clear()
            self.tables.clear()


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
    its (B, t, nh, hs) view. Backward: the rotation back, a product with the conjugate."""

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
    Two products and two fused multiply-adds (addcmul) over the halves, where the textbook
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
    as its (B, t, nh, hs) view. Backward: the rotation back."""

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
