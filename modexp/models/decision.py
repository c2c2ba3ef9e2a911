"""Causal routing decisions that adapt to the sequence: `threshold: prefix`.

Top-k routes the k = c*T highest router scores of each sequence, so whether token i is routed
depends on its sequence's own k-th score, which a single global threshold can only guess: at
T = 128 the k-th score moves from sequence to sequence by about half the spread of the scores,
and a global threshold matches top-k on ~95% of tokens (README, "What a faithful MoD is here").
A causal decision can estimate that k-th score from the prefix it has seen. At position i
(n = i + 1 tokens so far) the threshold is

    tau_i = (1 - w_n) * theta + w_n * q_i,    w_n = n / (n + prior),

where q_i is the ceil(c * n)-th largest decision logit of the prefix (its top-k at capacity
c, the current token included) and theta the calibrated global threshold (calibrate.py): a
shrinkage estimate that trusts the prefix as it grows, `prior` tokens' worth of weight on theta.
Route iff logit_i > tau_i. Only the past and the current token enter, so it is causal, and
decoding computes the same thresholds one token at a time (PrefixRow).

Measured on the quickstart's trained checkpoints (512 held-out sequences, router logit): a
global threshold agrees with top-k on 0.949-0.957 of tokens, this rule (prior 16) on
0.970-0.974, routing 11.5-12.4% of tokens at capacity 12.5%.
"""

from __future__ import annotations

import bisect
import math
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

ROWS_PER_CHUNK = 256  # prefix positions per (B, rows, T) block: bounded memory at long T


def prefix_counts(frac: float, n: Tensor) -> Tensor:
    """ceil(frac * n), at least 1: how many of n tokens the prefix's top-k keeps (float64)."""
    return torch.ceil(frac * n.double()).long().clamp_min(1)


def prefix_thresholds(logit: Tensor, frac: float, theta: Tensor, prior: int) -> Tensor:
    """Thresholds (B, T) for decision logits (B, T) of sequences from their first position."""
    B, T = logit.shape
    logit = logit.float()
    n = torch.arange(1, T + 1, device=logit.device)  # (T,) tokens seen at each position
    m = prefix_counts(frac, n)  # (T,)
    q = torch.empty(B, T, dtype=torch.float32, device=logit.device)
    pos = n - 1  # (T,) positions
    for a in range(0, T, ROWS_PER_CHUNK):
        b = min(T, a + ROWS_PER_CHUNK)
        later = pos > pos[a:b].unsqueeze(1)  # (b - a, T): key after the query
        prefix = logit.unsqueeze(1).masked_fill(later, float("-inf"))  # (B, b - a, T)
        top = prefix.topk(int(m[b - 1]), dim=-1).values  # (B, b - a, m) descending
        q[:, a:b] = top.gather(-1, (m[a:b] - 1).view(1, -1, 1).expand(B, -1, 1)).squeeze(-1)
    w = n.float() / (n + prior).float()  # (T,) float32, as PrefixRow computes it
    return (1 - w) * theta.float() + w * q


class PrefixRow:
    """One sequence's prefix while decoding: the same thresholds as prefix_thresholds, in the
    same float32 arithmetic (numpy float32 scalars), one token at a time."""

    def __init__(self, theta: float, frac: float, prior: int, logits: list[float]):
        self.theta, self.frac, self.prior = np.float32(theta), frac, prior
        self.seen = sorted(logits)  # ascending; float32 values held exactly as Python floats

    def passes(self, logit: float) -> bool:
        """Add this token's decision logit to the prefix; does it route (logit > tau)?"""
        bisect.insort(self.seen, logit)
        n = len(self.seen)
        m = max(1, math.ceil(self.frac * n))
        q = np.float32(self.seen[n - m])  # the m-th largest
        w = np.float32(n) / np.float32(n + self.prior)
        tau = (np.float32(1) - w) * self.theta + w * q
        return logit > float(tau)


# ---------------------------------------------------------------- decoding (decode.py)
def decider(layer, cache=None) -> Callable[[Tensor], bool]:
    """Batch-1 decode at a routed layer: x (1, 1, d) -> does this token route (logit > threshold)?

    The weights and the threshold are bound once per generation (they are fixed there),
    and the products are matrix-vector ones: at one token per step, module and parameter
    look-ups and F.linear's fixed cost would take longer than the arithmetic. With
    `threshold: prefix` the prompt's logits (the cache's, from the prefill) start the prefix.
    """
    if layer.predictor is None:
        w = layer.router.weight[0]  # (d,)
        score, bias = (lambda x: float(torch.dot(w, x.view(-1)))), 0.0
    else:
        first, last = layer.predictor[0], layer.predictor[2]
        w1, b1, w2 = first.weight, first.bias, last.weight[0]  # (h, d), (h,), (h,)
        score = lambda x: float(torch.dot(w2, F.gelu(torch.addmv(b1, w1, x.view(-1)))))  # noqa: E731
        bias = float(last.bias.detach())  # added on the host: no op for it
    if layer.prefix_prior is not None:
        return _prefix_decider(layer, lambda x: score(x) + bias, cache)
    bound = float(layer.threshold) - bias  # a host float: the comparison costs no op
    return lambda x: score(x) > bound


def batch_decider(layer, cache=None) -> Callable[[Tensor], Tensor]:
    """Batch decode: x (B, 1, d) -> (B,) bool, route iff logit > threshold; weights bound.

    The decision logit is the predictor's, else the router's, by the same F.linear calls
    forward's modules make (so the same logits), without their look-ups.
    """
    thr = float(layer.threshold)
    if layer.predictor is None:
        w = layer.router.weight  # (1, d); fp32 like _router_logits
        logit = lambda x: F.linear(x.float(), w)[:, 0, 0]  # noqa: E731
    else:
        first, last = layer.predictor[0], layer.predictor[2]
        w1, b1, w2, b2 = first.weight, first.bias, last.weight, last.bias  # (h, d), (h,), (1, h), (1,)
        logit = lambda x: F.linear(F.gelu(F.linear(x, w1, b1)), w2, b2)[:, 0, 0]  # noqa: E731
    if layer.prefix_prior is not None:
        decide = _prefix_decider(layer, lambda x: logit(x).tolist(), cache)
        return lambda x: torch.tensor(decide(x), dtype=torch.bool, device=x.device)
    return lambda x: logit(x) > thr


def _prefix_decider(layer, logit: Callable, cache) -> Callable:
    """Decide by `threshold: prefix` (a PrefixRow per row of the batch), the rows' prefixes
    started from the prompt's logits at this layer (left by the prefill in the cache)."""
    rows: list[PrefixRow] = []
    args = (float(layer.threshold), layer.capacity, layer.prefix_prior)

    def decide(x: Tensor):
        if not rows:  # first decode step: the prefill has run
            prompt = getattr(cache, "decision_logits", None)
            start = prompt.tolist() if prompt is not None else [[] for _ in range(x.size(0))]
            rows.extend(PrefixRow(*args, p) for p in start)
        v = logit(x)
        if isinstance(v, float):
            return rows[0].passes(v)
        return [row.passes(u) for row, u in zip(rows, v)]

    return decide
