"""The pre-norm transformer block (nanoGPT's, with RoPE and RMSNorm): attention, then an MLP.

x -> x + f(x), f(x) = a + m with a = attn(norm1(x)) and m = mlp(norm2(x + a)). No biases
anywhere: flops.py counts none, and the parameter count must match it exactly. The update f is
exposed apart (`Block.update`) because a Mixture-of-Depths layer (mod.py) adds it to the
tokens it routes only, scaled by their router weights.

Hot spots (the norms, the q/k/v projection with RoPE, attention) go through the model's
`Kernels` (ops.py), whose reference is what the docstrings below say.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch.nn.functional as F
from torch import Tensor, nn

from modexp.models.rope import Positions
from modexp.spec import ModelConfig

if TYPE_CHECKING:  # annotations only: the kernels are handed in, the cache passed through
    from modexp.models.decode import KVCache
    from modexp.models.ops import Kernels


class Attention(nn.Module):
    """Multi-head causal self-attention with RoPE at explicit positions; a KV cache may hold
    the keys and values of earlier tokens (decoding)."""

    def __init__(self, cfg: ModelConfig, kernels: Kernels):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)  # q, k, v fused
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.kernels = kernels

    def heads(self, x: Tensor, pos: Positions) -> tuple[Tensor, Tensor, Tensor]:
        """q, k, v (B, nh, t, hs) of x (B, t, d) at positions pos, q and k rotated by RoPE."""
        return self.kernels.qkv_rope(x, self.qkv.weight, pos.cos, pos.sin, self.n_heads)

    def forward(self, x: Tensor, pos: Positions, mask: Tensor | None = None,
                cache: KVCache | None = None) -> Tensor:
        """Self-attention of the t tokens x (B, t, d) at positions pos: (B, t, d).

        mask (B, 1, t, s): which keys each query sees; None: causal by order. With a cache the
        new keys and values are stored there and the queries attend over everything it holds.
        """
        q, k, v = self.heads(x, pos)  # (B, nh, t, hs) each
        if cache is not None:
            k, v, mask = cache.extend(k, v, mask)
        # A single query with no mask (a decode step over a cache) sees every key: SDPA's
        # is_causal would align it with the first key instead (top-left), so it is off.
        y = self.kernels.attention(q, k, v, mask, mask is None and q.size(2) > 1)
        B, nh, t, hs = y.shape
        return self.proj(y.transpose(1, 2).reshape(B, t, nh * hs))  # heads side by side


class MLP(nn.Module):
    """GELU MLP (d -> d_ff -> d) or SwiGLU (Shazeer 2020; gate and up fused in one matmul)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gated = cfg.mlp == "swiglu"
        n_in = 2 if self.gated else 1  # one (d, 2*d_ff) matmul costs what gate + up cost apart
        self.fc = nn.Linear(cfg.d_model, n_in * cfg.ffn, bias=False)
        self.proj = nn.Linear(cfg.ffn, cfg.d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """(B, t, d) -> (B, t, d)."""
        h = self.fc(x)  # (B, t, d_ff) or (B, t, 2*d_ff)
        if self.gated:
            gate, up = h.chunk(2, dim=-1)
            h = F.silu(gate) * up
        else:
            h = F.gelu(h)
        return self.proj(h)


class Block(nn.Module):
    """Pre-norm transformer block: the dense layer, x -> x + f(x)."""

    def __init__(self, cfg: ModelConfig, kernels: Kernels):
        super().__init__()
        self.norm1 = nn.RMSNorm(cfg.d_model)
        self.attn = Attention(cfg, kernels)
        self.norm2 = nn.RMSNorm(cfg.d_model)
        self.mlp = MLP(cfg)
        self.kernels = kernels

    def norm(self, norm: nn.RMSNorm, x: Tensor) -> Tensor:
        """norm(x) through the kernels' RMSNorm (reference: F.rms_norm)."""
        return self.kernels.rms_norm(x, norm.weight, norm.eps)

    def update(self, x: Tensor, pos: Positions, mask: Tensor | None = None,
               cache: KVCache | None = None) -> Tensor:
        """f(x) = block(x) - x (B, t, d), computed without the subtraction."""
        a = self.attn(self.norm(self.norm1, x), pos, mask, cache)  # (B, t, d)
        m = self.mlp(self.norm(self.norm2, x + a))
        return a + m

    def forward(self, x: Tensor, pos: Positions, routing: str = "topk",
                cache: KVCache | None = None) -> tuple[Tensor, None]:
        """(x + f(x), None): every token runs the block, whatever the routing (the layer
        interface a routed block shares, whose second output reports its routing). With a
        cache that holds a prompt (decoding), x is one new token per row: a decode step."""
        if cache is not None and cache.decoding:
            return self.kernels.block_step(self, x, pos, cache), None
        return x + self.update(x, pos, None, cache), None

    def step(self, x: Tensor, pos: Positions, cache: KVCache) -> Tensor:
        """Decode step: x + f(x) for one new token per row x (B, 1, d), over the cache."""
        return x + self.update(x, pos, None, cache)
