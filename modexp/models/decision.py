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
import struct
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
    w, a = prefix_weights(n, theta, prior)  # (T,) each
    return a + w * q


def prefix_weights(n: Tensor, theta: Tensor | float, prior: int) -> tuple[Tensor, Tensor]:
    """The blend's terms for prefix lengths n, float32: w = n / (n + prior) and (1 - w) theta."""
    w = n.float() / (n + prior).float()
    return w, (1 - w) * torch.as_tensor(theta, dtype=torch.float32, device=n.device)


class PrefixRow:
    """One sequence's prefix while decoding: the same thresholds as prefix_thresholds, to the
    bit, one token at a time.

    The per-length terms m, w and (1 - w) theta come from the same functions (tabled for the
    whole generation at once), and the blend a + w q is done in Python floats, each result
    rounded to float32: a double product or sum of two float32 values, rounded once to
    float32, is the float32 result (double rounding is exact for +, -, * when 53 >= 2 * 24 + 2
    bits). A token then costs one insertion and a few float operations, where numpy's
    float32 scalars took ~1 us each: decoding calls this once per routed layer and token.
    """

    def __init__(self, theta: float, frac: float, prior: int, logits: list[float], n_max: int = 0):
        self.theta, self.frac, self.prior = theta, frac, prior
        self.seen = sorted(logits)  # ascending; float32 values held exactly as Python floats
        self.m: list[int] = []  # per prefix length n: ceil(frac n), w and (1 - w) theta
        self.w: list[float] = []
        self.a: list[float] = []
        self._table(max(n_max, len(logits) + 1))
        self.tau = float("nan")  # the threshold of the last token added

    def passes(self, logit: float) -> bool:
        """Add this token's decision logit to the prefix; does it route (logit > tau)?"""
        bisect.insort(self.seen, logit)
        n = len(self.seen)
        if n >= len(self.m):
            self._table(2 * n)
        q = _f32(self.seen[n - self.m[n]])  # the m-th largest, as float32
        self.tau = _f32(self.a[n] + _f32(self.w[n] * q))  # (1 - w) theta + w q in float32
        return logit > self.tau

    def _table(self, n_max: int) -> None:
        """m, w and (1 - w) theta for prefix lengths 0..n_max, as prefix_thresholds computes them."""
        n = torch.arange(n_max + 1)
        w, a = prefix_weights(n, self.theta, self.prior)
        self.m, self.w, self.a = prefix_counts(self.frac, n).tolist(), w.tolist(), a.tolist()


def _f32(v: float, _s=struct.Struct("f")) -> float:
    """v rounded to the nearest float32 (an exact Python float)."""
    try:
        return _s.unpack(_s.pack(v))[0]
    except OverflowError:  # beyond float32's range: struct refuses, float32 gives +-inf
        return float(np.float32(v))


# ---------------------------------------------------------------- decoding (decode.py)
def decider(layer, cache=None) -> Callable[[Tensor], float | None]:
    """Batch-1 decode at a routed layer: x (1, 1, d) -> the token's router logit r if it routes
    (the gate's input, so the block need not compute it again), None if it skips.

    The weights and the threshold are bound once per generation (they are fixed there),
    and the products are matrix-vector ones: at one token per step, module and parameter
    look-ups and F.linear's fixed cost would take longer than the arithmetic. With
    `threshold: prefix` the prompt's logits (the cache's, from the prefill) start the prefix.
    The decision logit is the router's own for causal: aux_loss, else the predictor's, and
    then the router's dot product is taken only for tokens that route.
    """
    w = layer.router.weight[0]  # (d,)
    router = lambda x: float(torch.dot(w, x.view(-1)))  # noqa: E731
    if layer.predictor is None:
        score, bias = router, 0.0
    else:
        first, last = layer.predictor[0], layer.predictor[2]
        w1, b1, w2 = first.weight, first.bias, last.weight[0]  # (h, d), (h,), (h,)
        score = lambda x: float(torch.dot(w2, F.gelu(torch.addmv(b1, w1, x.view(-1)))))  # noqa: E731
        bias = float(last.bias.detach())  # added on the host: no op for it
    if layer.prefix_prior is not None:
        rows = _prefix_rows(layer, cache)
        passes = lambda s: rows(1)[0].passes(s + bias)  # noqa: E731
    else:
        bound = float(layer.threshold) - bias  # a host float: the comparison costs no op
        passes = lambda s: s > bound  # noqa: E731
    if layer.predictor is None:  # the decision logit is the router logit: one dot product
        def decide(x: Tensor) -> float | None:
            r = router(x)
            return r if passes(r) else None
        return decide
    return lambda x: router(x) if passes(score(x)) else None


def batch_decider(layer, cache=None) -> Callable[[Tensor], Tensor]:
    """Batch decode: x (B, 1, d) -> (B,) bool, route iff logit > threshold; weights bound.

    The decision logit is the predictor's, else the router's, by the same F.linear calls
    forward's modules make (so the same logits), without their look-ups.
    """
    thr = float(layer.threshold)
    if layer.predictor is None:
        w = layer.router.weight  # (1, d); in the weight's precision, as _router_logits
        logit = lambda x: F.linear(x.to(w.dtype), w)[:, 0, 0]  # noqa: E731
    else:
        first, last = layer.predictor[0], layer.predictor[2]
        w1, b1, w2, b2 = first.weight, first.bias, last.weight, last.bias  # (h, d), (h,), (1, h), (1,)
        logit = lambda x: F.linear(F.gelu(F.linear(x, w1, b1)), w2, b2)[:, 0, 0]  # noqa: E731
    if layer.prefix_prior is not None:
        rows = _prefix_rows(layer, cache)

        def decide(x: Tensor) -> Tensor:
            go = [row.passes(u) for row, u in zip(rows(x.size(0)), logit(x).tolist())]
            return torch.tensor(go, dtype=torch.bool, device=x.device)
        return decide
    return lambda x: logit(x) > thr


def _prefix_rows(layer, cache) -> Callable[[int], list[PrefixRow]]:
    """`threshold: prefix` state for a batch: rows(B) -> a PrefixRow per row, made on the first
    call (after the prefill) from the prompt's logits at this layer, left in the cache."""
    made: list[PrefixRow] = []
    args = (float(layer.threshold), layer.capacity, layer.prefix_prior)
    n_max = cache.max_len if cache is not None else 0  # every length decoding can reach

    def rows(batch: int) -> list[PrefixRow]:
        if not made:
            prompt = getattr(cache, "decision_logits", None)
            start = prompt.tolist() if prompt is not None else [[] for _ in range(batch)]
            made.extend(PrefixRow(*args, p, n_max) for p in start)
        return made

    return rows
