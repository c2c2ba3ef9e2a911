"""RMSNorm with a closed-form backward, for CPU training steps in fp32.

On the CPU, torch's F.rms_norm is a composite of pow, mean, rsqrt and muls, and autograd
differentiates each of them. The forward here keeps its ops (bit-identical values); the
backward is the closed form, with x^ = x r, r = rsqrt(mean(x^2) + eps):
dw = sum_n g x^ and dx = r (g w - x^ mean(g w x^)) = r g w - x r^3 (g x . w) / d. Both
reductions of t = g x are matrix-vector products (dw = r^T t, t w): four passes over (N, d)
where autograd's op-by-op order makes eight.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


class _RMSNormCPU(torch.autograd.Function):
    """F.rms_norm's fp32 CPU forward, op for op, with the analytic backward above."""

    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor, eps: float) -> Tensor:
        r = torch.rsqrt(x.pow(2).mean(-1, keepdim=True).add_(eps))  # (..., 1)
        ctx.save_for_backward(x, r, w)  # x is the block's input: kept alive anyway
        return (x * r).mul_(w)

    @staticmethod
    def backward(ctx, g: Tensor):
        x, r, w = ctx.saved_tensors
        d = x.size(-1)
        n = x.numel() // d
        x2, g2, r2 = x.reshape(n, d), g.reshape(n, d), r.reshape(n, 1)
        t = g2 * x2  # (N, d)
        gw = (r2.t() @ t).view(d)  # sum_n r_n g_n x_n
        coef = (t @ w).view(n, 1).mul_(r2).mul_(r2).mul_(r2).div_(d)  # r^3 (g x . w) / d
        gx = (g2 * w).mul_(r2).addcmul_(x2, coef, value=-1.0)
        return gx.view(x.shape), gw, None


def rms_norm(x: Tensor, weight: Tensor, eps: float | None) -> Tensor:
    """RMSNorm of x's last dim: _RMSNormCPU on the CPU in fp32 with a gradient, else F.rms_norm
    (the same values either way)."""
    if x.device.type == "cpu" and x.dtype == torch.float32 and torch.is_grad_enabled():
        return _RMSNormCPU.apply(x, weight, eps if eps is not None else torch.finfo(x.dtype).eps)
    return F.rms_norm(x, (x.size(-1),), weight, eps)
