"""The paper's stochastic-routing control (Raposo et al. 2024, arXiv 2404.02258, fig. 3): a
routed layer whose router weights are drawn, not learned.

Each token's router weight is a standard Gaussian draw z ~ N(0, 1) (the paper draws its
stochastic router's weights from a Gaussian; we take the standard one, whose quantiles are
known in closed form, below). Training routes the top-k draws of each sequence, k =
max(1, floor(c T)) as learned routing does, and scales each chosen token's update by the same
gate the learned router's update gets, on the drawn weight: x + g(z) f(x), g = sigmoid or the
identity (the variant's `gate`). `gate: one` is the other control, x + f(x) unscaled: it asks
whether the chosen tokens matter once the gate is fixed, not whether a learned choice beats a
drawn one. No router matmul, no predictor: flops.py counts a learned MoD minus its router.

Causal routing (evaluation, prefill, decoding): top-k is not causal, so a token routes iff its
draw exceeds the Gaussian's (1 - c) quantile, Phi^-1(1 - c): P(z > q) = c, the capacity in
expectation, every token on its own. So `generate()` and `modexp sample` decode this control
as they decode learned MoD.

The draws are a pure function of (run seed, layer, step, global batch row, position): a
counter-based hash (splitmix64's finaliser, Steele et al. 2014) of those integers computed
with int64 tensor ops on the model's device, then Box-Muller. So 1 and N DDP processes and any
micro-batch size draw the same weights for the same sequence, with no host sync, no CPU
generator and no host-to-device copy in the forward. The step and the micro-batch's first
global row are buffers the trainer fills (`Transformer.set_draws`), so a compiled forward
reads them as tensors and never recompiles. In eval mode the step is EVAL_STEP: every
evaluation of a run (and every generation) sees the same routing for the same row.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from modexp.flops import routed_k
from modexp.models.block import Block
from modexp.models.mod import TOPK_CACHE, RouteInfo, RoutedBlock, membership, topk_positions
from modexp.models.rope import Positions
from modexp.spec import ModelConfig, ModVariant

if TYPE_CHECKING:  # annotations only: the kernels are handed in, the cache passed through
    from modexp.models.decode import KVCache
    from modexp.models.ops import Kernels

EVAL_STEP = -1
"""The step evaluation and decoding draw at: one fixed pattern per layer and row."""


def _signed(c: int) -> int:
    """A 64-bit constant as the int64 that has its bits (torch has no uint64 arithmetic)."""
    return c - 2**64 if c >= 2**63 else c


GOLDEN = _signed(0x9E3779B97F4A7C15)  # splitmix64's increment, 2^64 / golden ratio
MIX1, MIX2 = _signed(0xBF58476D1CE4E5B9), _signed(0x94D049BB133111EB)


def _shr(z: Tensor, s: int) -> Tensor:
    """Logical right shift of int64 bits (torch's >> is arithmetic: mask the sign's copies)."""
    return (z >> s) & ((1 << (64 - s)) - 1)


def mix64(z: Tensor) -> Tensor:
    """splitmix64's finaliser: a bijection of 64-bit words whose output bits all depend on
    every input bit (int64 multiplication wraps modulo 2^64, as the uint64 one)."""
    z = (z ^ _shr(z, 30)) * MIX1
    z = (z ^ _shr(z, 27)) * MIX2
    return z ^ _shr(z, 31)


def draw_hash(seed: Tensor, layer: int, step: Tensor, rows: Tensor, positions: Tensor) -> Tensor:
    """(B, T) int64 hashes of (seed, layer, step, row, position), each integer folded in turn:
    h <- mix64(h + v * GOLDEN). seed, step: scalar int64 tensors; rows (B, 1); positions (b, T)."""
    h = mix64(seed + _signed((layer + 1) * GOLDEN % 2**64))  # a Python int: wrapped here
    h = mix64(h + step * GOLDEN)
    h = mix64(h + rows * GOLDEN)  # (B, 1)
    return mix64(h + positions * GOLDEN)  # (B, T)


def gaussian(h: Tensor) -> Tensor:
    """Standard normal float32 draws from 64-bit hashes by Box-Muller: two 23-bit uniforms
    from disjoint bit fields, u1 in (0, 1) (never 0: log stays finite), u2 in [0, 1)."""
    u1 = (_shr(h, 41).float() + 0.5) * 2.0**-23
    u2 = (_shr(h, 18) & (2**23 - 1)).float() * 2.0**-23
    return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos((2 * math.pi) * u2)


def causal_threshold(capacity: float) -> float:
    """Phi^-1(1 - c): a standard normal draw exceeds it with probability c (-inf at c = 1)."""
    return -math.inf if capacity >= 1 else NormalDist().inv_cdf(1.0 - capacity)


class RandomRouting(nn.Module):
    """A layer's draw counters: the run seed (saved in checkpoints, so a model loaded to
    sample draws as the run did), the step and the micro-batch's first global batch row
    (filled by the trainer through `set`; not saved: the trainer sets them every step)."""

    def __init__(self, layer: int):
        super().__init__()
        self.layer = layer
        # the seed torch was seeded with when the model was built (runner: manual_seed(run.seed))
        self.register_buffer("seed", torch.tensor(torch.initial_seed() % 2**63))
        self.register_buffer("step", torch.zeros((), dtype=torch.long), persistent=False)
        self.register_buffer("row", torch.zeros((), dtype=torch.long), persistent=False)

    def set(self, step: int, row: int) -> None:
        """Draw next at (step, first global row): fills on the device, no copy, no sync."""
        self.step.fill_(step)
        self.row.fill_(row)

    def weights(self, B: int, positions: Tensor, training: bool) -> Tensor:
        """(B, T) N(0, 1) router weights of rows row..row+B-1 at positions (b, T)."""
        rows = self.row + torch.arange(B, device=positions.device).unsqueeze(1)  # (B, 1)
        step = self.step if training else torch.full_like(self.step, EVAL_STEP)
        return gaussian(draw_hash(self.seed, self.layer, step, rows, positions))


class RandomRoutedBlock(RoutedBlock):
    """A Block whose routing weights are Gaussian draws (`RandomRouting`): top-k of them in
    training, each token against Phi^-1(1 - c) causally; its update scaled by g(z)."""

    def __init__(self, cfg: ModelConfig, variant: ModVariant, capacity: float, layer: int,
                 kernels: Kernels):
        Block.__init__(self, cfg, kernels)  # no router, no decision: nothing learned routes
        self.capacity, self.gate = capacity, variant.gate
        self.router = self.decision = None
        self.random = RandomRouting(layer)
        self.threshold = causal_threshold(capacity)

    def init_weights(self, router_gen: torch.Generator, predictor_gen: torch.Generator) -> None:
        """Nothing to initialise: the routing is drawn, not learned."""

    def forward(self, x: Tensor, pos: Positions, routing: str = "topk",
                cache: KVCache | None = None) -> tuple[Tensor, RouteInfo | None]:
        """x (B, T, d) -> (x with the routed tokens updated, RouteInfo). routing "topk":
        the top-k draws of each row; "causal" (and "calibrate": nothing to calibrate) each
        token by its draw against the threshold; a decoding cache makes it a decode step."""
        if cache is not None and cache.decoding:
            return self.step(x, pos, cache), None
        B, T, _ = x.shape
        z = self.random.weights(B, pos.index, self.training)  # (B, T)
        k = routed_k(self.capacity, T)
        if routing == "topk":
            if cache is not None:
                raise ValueError(TOPK_CACHE)
            idx = topk_positions(z, k)  # (B, k), sorted by position
            n = torch.full((), idx.numel(), dtype=torch.long, device=x.device)
            out = self._run_topk(x, pos, z, idx)
            if self.training:
                return out, RouteInfo(idx, None, n, None, None, None, None)
            # evaluation: the causal rule scored against top-k of the same draws
            return out, RouteInfo(idx, None, n, membership(idx, z), z > self.threshold, None, None)
        if routing not in ("causal", "calibrate"):
            raise ValueError(f"routing must be 'topk', 'causal' or 'calibrate', got {routing!r}")
        decision = z > self.threshold  # (B, T)
        out, idx, valid = self._run_causal(x, pos, z, decision, cache)
        member = membership(topk_positions(z, k), z)  # what top-k would have done, for stats
        return out, RouteInfo(idx, valid, decision.sum(), member, decision, None, None)

    def step_decision(self, x: Tensor, pos: Positions, cache: KVCache) -> tuple[Tensor, Tensor]:
        """The new token's drawn weight (B, 1) and whether it routes (B,)."""
        z = self.random.weights(x.size(0), pos.index, self.training)  # (B, 1)
        return z, z[:, 0] > self.threshold

    def gated(self, r: Tensor, f: Tensor) -> Tensor:
        """g(z) * f for drawn weights z (B, k), f (B, k, d); gate one: f unscaled."""
        if self.gate == "one":
            return f
        return super().gated(r, f)
