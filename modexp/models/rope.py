"""Rotary position embedding (RoPE, Su et al. 2021, arXiv 2104.09864) from explicit positions.

Positions are explicit so the tokens a Mixture-of-Depths layer gathers keep their original
ones (Raposo et al. 2024: RoPE on gathered positions, not 0..k-1). Each head's q and k are
laid out in halves [x1 | x2], and the pair (x1_i, x2_i) is rotated by the angle
pos * inv_freq_i, inv_freq_i = base^(-2i / hs):

    rope(x) = x * [cos, cos] + rotate_half(x) * [sin, sin],  rotate_half([x1 | x2]) = [-x2 | x1]

The tables cos and sin are computed once for every position a model will see (the builder
reserves the spec's seq_len; generation reserves its own length before it starts) and looked
up per forward pass, never grown inside it.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Positions(NamedTuple):
    """Where tokens sit in their sequences, and RoPE's angles there."""

    index: Tensor  # (b, t) int64 original positions; b is 1 when every row has the same
    cos: Tensor  # (b, t, hs/2) cos(index * inv_freq)
    sin: Tensor  # (b, t, hs/2) sin(index * inv_freq)

    def gather(self, idx: Tensor) -> Positions:
        """The positions of the tokens idx (B, k) of each row (a routed layer's gathered ones)."""
        B, h = idx.size(0), self.cos.size(-1)
        at = idx.unsqueeze(-1).expand(-1, -1, h)  # (B, k, hs/2)
        return Positions(self.index.expand(B, -1).gather(1, idx),
                         self.cos.expand(B, -1, -1).gather(1, at),
                         self.sin.expand(B, -1, -1).gather(1, at))

    def split(self) -> list[Positions]:
        """One Positions (b, 1) per position, as views (decoding feeds one token at a time)."""
        return [Positions(*parts) for parts in zip(self.index.split(1, dim=1),
                                                   self.cos.split(1, dim=1),
                                                   self.sin.split(1, dim=1))]


class Rotary(nn.Module):
    """RoPE's cos and sin tables over positions 0..max_len-1 (buffers outside the state_dict:
    they follow from head_size and base), shared by every layer of a model."""

    def __init__(self, head_size: int, base: float, max_len: int):
        super().__init__()
        inv_freq = base ** (-torch.arange(0, head_size, 2, dtype=torch.float32) / head_size)
        self.register_buffer("inv_freq", inv_freq, persistent=False)  # (hs/2,)
        self.register_buffer("cos", torch.empty(0, head_size // 2), persistent=False)
        self.register_buffer("sin", torch.empty(0, head_size // 2), persistent=False)
        self.reserve(max_len)

    @property
    def max_len(self) -> int:
        """Positions the tables cover."""
        return self.cos.size(0)

    def reserve(self, n: int) -> None:
        """Tables for positions 0..n-1 at least: called before a forward pass, never in one."""
        if n <= self.max_len:
            return
        pos = torch.arange(n, device=self.inv_freq.device, dtype=torch.float32)
        theta = pos.unsqueeze(-1) * self.inv_freq  # (n, hs/2)
        self.cos, self.sin = theta.cos(), theta.sin()

    def at(self, index: Tensor) -> Positions:
        """Positions and angles for integer positions index (b, t)."""
        b, t = index.shape
        rows = index.reshape(-1)
        return Positions(index, self.cos.index_select(0, rows).view(b, t, -1),
                         self.sin.index_select(0, rows).view(b, t, -1))


def rotate_half(x: Tensor) -> Tensor:
    """[x1 | x2] -> [-x2 | x1] over the last dim: the 90-degree turn of every pair."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x (B, t, nh, hs), each head's pairs (x1_i, x2_i) rotated by the angles cos, sin (b, t, hs/2)."""
    cos = torch.cat((cos, cos), dim=-1).unsqueeze(2).to(x.dtype)  # (b, t, 1, hs): all heads
    sin = torch.cat((sin, sin), dim=-1).unsqueeze(2).to(x.dtype)
    return x * cos + rotate_half(x) * sin


def qkv_rope(x: Tensor, weight: Tensor, cos: Tensor, sin: Tensor,
             n_heads: int) -> tuple[Tensor, Tensor, Tensor]:
    """The fused q, k, v projection of x (B, t, d) by weight (3d, d), RoPE on q and k:
    q, k, v each (B, nh, t, hs)."""
    B, t, _ = x.shape
    q, k, v = F.linear(x, weight).view(B, t, 3, n_heads, -1).unbind(2)  # (B, t, nh, hs) each
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
