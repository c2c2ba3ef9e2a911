"""The model's hot spots as one `Kernels` object, and their reference: plain PyTorch.

Every module that has a hot spot calls it through the `Kernels` it was built with, so the
model files read as the textbook model and a faster implementation can stand in without them
knowing: `REFERENCE` (below) is what they compute, and modexp/models/build.py, the one place
kernels are chosen, replaces fields of it with modexp/kernels/'s functions for the device a
model is built for. Without modexp/kernels/ every model runs on REFERENCE: correct, slower.

A replacement must compute what the reference computes (tests/test_kernels.py compares
values and gradients); it may differ in rounding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch.nn.functional as F
from torch import Tensor

from modexp.models import rope
from modexp.models.block import Block
from modexp.models.decode import Decoder
from modexp.models.mod import RoutedBlock


def rms_norm(x: Tensor, weight: Tensor, eps: float | None) -> Tensor:
    """RMSNorm (Zhang and Sennrich 2019) of x's last dim, scaled by weight: F.rms_norm."""
    return F.rms_norm(x, (x.size(-1),), weight, eps)


def attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, causal: bool) -> Tensor:
    """softmax(q k^T / sqrt(hs) + mask) v for q, k, v (B, nh, t, hs), causal by order if
    `causal`: F.scaled_dot_product_attention."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)


def gather_rows(x: Tensor, rows: Tensor) -> Tensor:
    """Rows `rows` (n,) of x (N, d), all distinct: (n, d)."""
    return x.index_select(0, rows)


@dataclass(frozen=True)
class Kernels:
    """The functions a model's modules call for their hot spots, chosen once per model."""

    name: str
    """Which set this is: "reference", or the device the kernels were chosen for."""
    rms_norm: Callable[[Tensor, Tensor, float | None], Tensor]
    """(x, weight, eps) -> RMSNorm of x over its last dim (every norm of the model)."""
    qkv_rope: Callable[[Tensor, Tensor, Tensor, Tensor, int], tuple[Tensor, Tensor, Tensor]]
    """(x (B, t, d), qkv weight (3d, d), cos, sin (b, t, hs/2), n_heads) -> q, k, v, each
    (B, nh, t, hs), q and k rotated by RoPE (rope.qkv_rope)."""
    attention: Callable[[Tensor, Tensor, Tensor, Tensor | None, bool], Tensor]
    """(q, k, v, mask (B, 1, t, s) or None, causal) -> attention output (B, nh, t, hs)."""
    gather_rows: Callable[[Tensor, Tensor], Tensor]
    """(x (N, d), rows (n,) distinct) -> x's rows (n, d): a routed layer's top-k gather."""
    block_step: Callable
    """(block, x (B, 1, d), Positions, KVCache) -> x + f(x): a dense layer's decode step for
    one new token per row (reference: Block.step)."""
    routed_step: Callable
    """(routed block, x (B, 1, d), Positions, KVCache) -> x: a routed layer's decode step
    for one new token per row (reference: RoutedBlock.step)."""
    decoder: Callable
    """(model, caches) -> a Decoder (decode.py): prefill and decode steps of one generation."""


REFERENCE = Kernels(name="reference", rms_norm=rms_norm, qkv_rope=rope.qkv_rope,
                    attention=attention, gather_rows=gather_rows, block_step=Block.step,
                    routed_step=RoutedBlock.step, decoder=Decoder)
"""Plain PyTorch: what every replacement must compute."""
