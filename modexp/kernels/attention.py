"""Causal attention for CPU training steps: batched matmuls in causal query blocks.

SDPA's CPU flash kernel blocks its loops for long sequences and wide heads; at the sequence
lengths and head sizes of the CPU specs (T up to 128, heads of 6-64) most of its time is
overhead. There a training step runs attention as plain batched matmuls instead: scores by
`baddbmm` with a causal bias (made once per shape), softmax, `bmm` with v, and autograd's own
backward of those (softmax's is one fused kernel). Up to 64 positions the whole (t, t) square
is one block; from 65 to 128 the queries come in two halves, and the first half skips the keys
of the second, which it could not see: a quarter of the score and value work is never done.
Longer sequences and wider heads keep SDPA, and so do evaluation, prefill and decoding
(docs/performance.md has the measurements behind these limits).

flops.py charges attention as the full square (its "matmul" convention, the same for vanilla
and MoD); like the flash kernel, this path computes less than that at t > 64.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

MAX_HEAD = 64  # widest head (hs) on the matmul path
MAX_T = 128  # longest sequence on it; above 64, two causal query blocks
ONE_BLOCK_T = 64  # up to here one block: the masked quarter is too small to pay for a split
MAX_SCORES = 2 ** 23  # B * nh * t * t at most: the probabilities it keeps, 32 MiB in fp32


def matmul_path(q: Tensor) -> bool:
    """Whether a training step's causal attention over q (B, nh, t, hs) takes
    `matmul_attention`: CPU, float32/64, eager, with a gradient, t <= 128, hs <= 64 and a
    bounded score matrix. Evaluation, prefill and decoding keep SDPA."""
    B, nh, t, hs = q.shape
    return (q.device.type == "cpu" and hs <= MAX_HEAD and t <= MAX_T
            and B * nh * t * t <= MAX_SCORES and q.dtype in (torch.float32, torch.float64)
            and torch.is_grad_enabled() and q.requires_grad and not torch.compiler.is_compiling())


def query_blocks(t: int) -> list[tuple[int, int]]:
    """The causal query blocks [a, e) of a length-t sequence; block [a, e) sees keys [0, e)."""
    if t <= ONE_BLOCK_T:
        return [(0, t)]
    h = t // 2
    return [(0, h), (h, t)]


def causal_bias(t: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """(t, t): 0 on and below the diagonal, -inf above it."""
    above = torch.ones(t, t, dtype=torch.bool, device=device).triu(1)
    return torch.zeros(t, t, dtype=dtype, device=device).masked_fill(above, float("-inf"))


def matmul_attention(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None = None) -> Tensor:
    """Causal softmax(q k^T / sqrt(hs)) v by batched matmuls; q, k, v (B, nh, t, hs).

    bias: causal_bias(t, ...) if the caller keeps one (made here otherwise)."""
    B, nh, t, hs = q.shape
    q, k, v = (x.reshape(B * nh, t, hs) for x in (q, k, v))  # (B nh, t, hs)
    bias = causal_bias(t, q.dtype, q.device) if bias is None else bias
    out = []
    for a, e in query_blocks(t):
        s = torch.baddbmm(bias[a:e, :e], q[:, a:e], k[:, :e].transpose(1, 2),
                          alpha=hs ** -0.5)  # (B nh, e - a, e)
        out.append(torch.bmm(s.softmax(-1), v[:, :e]))  # (B nh, e - a, hs)
    y = out[0] if len(out) == 1 else torch.cat(out, 1)
    return y.view(B, nh, t, hs)


class CausalAttention:
    """The attention kernel of one model: matmul_attention where it applies, else SDPA; the
    causal biases kept per (t, dtype, device)."""

    def __init__(self):
        self._bias: dict[tuple, Tensor] = {}

    def attention(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None,
                  causal: bool) -> Tensor:
        """Attention output (B, nh, t, hs), as F.scaled_dot_product_attention computes it."""
        if causal and matmul_path(q):  # training only: eval and decoding keep SDPA
            key = (q.size(2), q.dtype, q.device)
            if key not in self._bias:
                self._bias[key] = causal_bias(*key)
            return matmul_attention(q, k, v, self._bias[key])
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
