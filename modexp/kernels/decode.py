"""The decode loop with what a generation keeps fixed bound once: modexp.models.decode's
Decoder, Block.step and RoutedBlock.step, computed with fewer ops and calls per token.

Batch-1 decoding on a CPU is bound by each op's fixed cost (microseconds, as long as the
arithmetic of a narrow layer), so this loop keeps ops and allocations out of it:
- every layer's weights are bound on its first step (`BoundLayer`: the block's ops without
  its submodules' calls), the embedding, final norm and LM head too (`Ends`: the head as one
  mm on a weight transposed once), and the RoPE angles of every position are looked up once;
- RoPE's permuted qkv weights (rope.py's paired path) are made once per generation;
- a routed layer's decision is a matrix-vector product on weights bound once (`decider`):
  at batch 1 in Python floats, the threshold a host float, and with `threshold: prefix` the
  prefix kept sorted in Python floats (`PrefixRow`), from the per-length terms the model's
  Decision tables (the same float32 thresholds, to the bit); the router logit it computes is
  handed to the gate, which folds into the residual add as a Python float;
- oneDNN is off on the CPU while a generation runs (`native_cpu_kernels`): its exact GELU has
  a far larger fixed cost per call than ATen's at these sizes; the two agree to ~1e-7.
Every layer is still called as a module, so its forward hooks fire on every decode step (its
submodules' hooks fire in the prefill, and on the reference decoder).
"""

from __future__ import annotations

import bisect
import math
import struct
from contextlib import ExitStack, contextmanager
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from modexp.kernels.rope import QKVRope, paired_path


class FastDecoder:
    """The reference Decoder's prefill and steps (modexp.models.decode), with the bindings
    above made on entry and released on exit."""

    def __init__(self, model, caches: list, rope: QKVRope):
        self.model, self.caches, self.rope = model, caches, rope
        self.device = model.head.weight.device
        index = torch.arange(caches[0].max_len, device=self.device).unsqueeze(0)
        self.positions = model.rotary.at(index).split()  # looked up once per generation
        self.layers = list(zip(model.blocks, caches))
        self.ends = Ends(model)
        self._exit = ExitStack()

    def __enter__(self) -> FastDecoder:
        self._exit.enter_context(native_cpu_kernels(self.device))
        dtype = self.model.head.weight.dtype
        if paired_path(dtype, self.device.type):
            weights = [(b.attn.qkv.weight, b.attn.n_heads) for b in self.model.blocks]
            self._exit.enter_context(self.rope.binding(weights, self.positions, dtype))
        return self

    def __exit__(self, *exc) -> None:
        self._exit.close()

    def prefill(self, prompt: Tensor) -> Tensor:
        """Fill the caches with the prompt (B, P): the logits (B, V) after its last token."""
        return self.model(prompt, routing="causal", caches=self.caches).logits[:, -1]

    def step(self, tok: Tensor, p: int) -> Tensor:
        """Logits (B, V) for the next token after tok (B, 1), which sits at position p."""
        x = self.ends.embed_tokens(tok)  # (B, 1, d)
        pos = self.positions[p]
        for block, cache in self.layers:
            x, _ = block(x, pos, "causal", cache)
        return self.ends.logits(x)


class Ends:
    """The embedding, final norm and LM head of a model, their weights bound once per
    generation: costs every model pays per token, not per layer, weigh more in MoD's smaller
    step, so they run as the modules compute them without the module calls."""

    def __init__(self, model):
        self.embed = model.embed.weight  # (V, d)
        norm = model.norm
        self.norm = (norm.normalized_shape, norm.weight, norm.eps)
        self.head_t = model.head.weight.t()  # (d, V), transposed once: each step is one mm

    def embed_tokens(self, tok: Tensor) -> Tensor:
        """(B, 1) -> (B, 1, d): the rows nn.Embedding copies (its index_select, minus its call)."""
        return self.embed.index_select(0, tok.view(-1)).unsqueeze(1)

    def logits(self, x: Tensor) -> Tensor:
        """(B, 1, d) -> (B, V): the final norm, then the mm F.linear folds a (B, 1, d) input to."""
        x = F.rms_norm(x, *self.norm)
        return torch.mm(x.view(x.size(0), -1), self.head_t)


# ---------------------------------------------------------------- a layer's step
class BoundLayer:
    """One layer's weights for one generation, bound on its first decode step (they are fixed
    there), and a routed layer's decision: the step runs on them without a module call or a
    parameter look-up."""

    def __init__(self, block, cache, batch: int):
        attn, mlp, n1, n2 = block.attn, block.mlp, block.norm1, block.norm2
        self.qkv_rope, self.n_heads = block.kernels.qkv_rope, attn.n_heads
        self.norm1 = (n1.normalized_shape, n1.weight, n1.eps)
        self.norm2 = (n2.normalized_shape, n2.weight, n2.eps)
        self.qkv, self.proj = attn.qkv.weight, attn.proj.weight
        self.fc, self.out, self.gated = mlp.fc.weight, mlp.proj.weight, mlp.gated
        self.router = self.decide = None
        if getattr(block, "router", None) is not None:  # a routed layer
            self.router = block.router.weight
            self.decide = decider(block, cache) if batch == 1 else batch_decider(block, cache)

    def update(self, x: Tensor, pos, cache) -> Tensor:
        """Block.update(x, pos, None, cache) for decode tokens x (n, 1, d), by the same ops."""
        h = F.rms_norm(x, *self.norm1)
        q, k, v = self.qkv_rope(h, self.qkv, pos.cos, pos.sin, self.n_heads)  # (n, nh, 1, hs)
        k, v, mask = cache.extend(k, v, None)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # one query: every key
        B, nh, t, hs = y.shape
        a = F.linear(y.transpose(1, 2).reshape(B, t, nh * hs), self.proj)
        h = F.linear(F.rms_norm(x + a, *self.norm2), self.fc)
        if self.gated:
            gate, up = h.chunk(2, dim=-1)
            h = F.silu(gate) * up
        else:
            h = F.gelu(h)
        return a + F.linear(h, self.out)


def bound(block, cache, batch: int) -> BoundLayer:
    """The layer's bindings for this generation, made on its first decode step."""
    if cache.bound is None:
        cache.bound = BoundLayer(block, cache, batch)
    return cache.bound


def block_step(block, x: Tensor, pos, cache) -> Tensor:
    """Block.step: x + f(x) for one token per row x (B, 1, d), on the bound weights."""
    return x + bound(block, cache, x.size(0)).update(x, pos, cache)


def routed_step(layer, x: Tensor, pos, cache) -> Tensor:
    """RoutedBlock.step for one token per row x (B, 1, d): the decision and the block on the
    weights bound for the generation, the block on the routed rows through the cheapest path
    their number allows."""
    bl = bound(layer, cache, x.size(0))
    if x.size(0) == 1:  # batch 1: a skipping token skips the whole block
        r = bl.decide(x)
        cache.decisions.append(r is not None)
        if r is None:
            return x
        f = bl.update(x, pos, cache)  # (1, 1, d)
        g = 0.5 * (1.0 + math.tanh(0.5 * r)) if layer.gate == "sigmoid" else r  # sigmoid(r)
        return torch.add(x, f, alpha=g)  # g(r) folded into the residual add
    go = bl.decide(x)
    cache.decisions.append(go)
    ids = [b for b, g in enumerate(go.tolist()) if g]  # host sync: shapes depend on it
    if not ids:
        return x
    if len(ids) == x.size(0):
        return x + _gated_update(layer, bl, x, pos, cache)
    if len(ids) == 1:  # the usual case at small capacity: row r alone, as at batch 1
        r = ids[0]
        upd = _gated_update(layer, bl, x[r:r + 1], pos, cache.rows(ids, None))
        out = x.clone()
        out[r:r + 1] += upd  # x[r] + upd, as index_add computes it
        return out
    at = torch.tensor(ids, device=x.device)  # (n,)
    upd = _gated_update(layer, bl, x.index_select(0, at), pos, cache.rows(ids, at))
    return x.index_add(0, at, upd)


def _gated_update(layer, bl: BoundLayer, x: Tensor, pos, cache) -> Tensor:
    """g(r) * f (n, 1, d) for decode tokens x (n, 1, d) that route, via the cache."""
    f = bl.update(x, pos, cache)  # attends over this layer's cached routed tokens
    r = F.linear(x, bl.router).squeeze(-1)  # (n, 1) router logits (decode: fp32)
    return layer.gated(r, f).to(x.dtype)


# ---------------------------------------------------------------- the decision, bound
def decider(layer, cache=None) -> Callable[[Tensor], float | None]:
    """Batch-1 decode at a routed layer: x (1, 1, d) -> the token's router logit r if it routes
    (the gate's input, so the block need not compute it again), None if it skips.

    The products are matrix-vector ones on weights bound here: at one token per step, module
    and parameter look-ups and F.linear's fixed cost would take longer than the arithmetic.
    The decision logit is the router's own for causal: aux_loss, else the predictor's (its
    output bias added on the host), and then the router's dot product is taken only for
    tokens that route. With `threshold: prefix` the prompt's logits start the prefix.
    """
    decision = layer.decision
    w = layer.router.weight[0]  # (d,)
    router = lambda x: float(torch.dot(w, x.view(-1)))  # noqa: E731
    if decision.predictor is None:
        score, bias = router, 0.0
    else:
        first, last = decision.predictor[0], decision.predictor[2]
        w1, b1, w2 = first.weight, first.bias, last.weight[0]  # (h, d), (h,), (h,)
        score = lambda x: float(torch.dot(w2, F.gelu(torch.addmv(b1, w1, x.view(-1)))))  # noqa: E731
        bias = float(last.bias.detach())  # added on the host: no op for it
    if decision.prefix_prior is not None:
        rows = _prefix_rows(decision, cache)
        passes = lambda s: rows(1)[0].passes(s + bias)  # noqa: E731
    else:
        bound = float(decision.threshold) - bias  # a host float: the comparison costs no op
        passes = lambda s: s > bound  # noqa: E731
    if decision.predictor is None:  # the decision logit is the router logit: one dot product
        def decide(x: Tensor) -> float | None:
            r = router(x)
            return r if passes(r) else None
        return decide
    return lambda x: router(x) if passes(score(x)) else None


def batch_decider(layer, cache=None) -> Callable[[Tensor], Tensor]:
    """Batch decode: x (B, 1, d) -> (B,) bool, route iff logit > threshold; weights bound.

    The decision logit is the predictor's, else the router's, by the same F.linear calls the
    modules make (so the same logits), without their look-ups.
    """
    decision = layer.decision
    thr = float(decision.threshold)
    if decision.predictor is None:
        w = layer.router.weight  # (1, d); in the weight's precision, as router_logits
        logit = lambda x: F.linear(x.to(w.dtype), w)[:, 0, 0]  # noqa: E731
    else:
        first, last = decision.predictor[0], decision.predictor[2]
        w1, b1, w2, b2 = first.weight, first.bias, last.weight, last.bias  # (h, d), (h,), (1, h), (1,)
        logit = lambda x: F.linear(F.gelu(F.linear(x, w1, b1)), w2, b2)[:, 0, 0]  # noqa: E731
    if decision.prefix_prior is not None:
        rows = _prefix_rows(decision, cache)

        def decide(x: Tensor) -> Tensor:
            go = [row.passes(u) for row, u in zip(rows(x.size(0)), logit(x).tolist())]
            return torch.tensor(go, dtype=torch.bool, device=x.device)
        return decide
    return lambda x: logit(x) > thr


def _prefix_rows(decision, cache) -> Callable[[int], list[PrefixRow]]:
    """`threshold: prefix` state for a batch: rows(B) -> a PrefixRow per row, made on the first
    call (after the prefill) from the prompt's logits at this layer (the cache's state)."""
    made: list[PrefixRow] = []
    n_max = cache.max_len if cache is not None else 0  # every length decoding can reach

    def rows(batch: int) -> list[PrefixRow]:
        if not made:
            state = getattr(cache, "decision", None)
            start = state.seen.tolist() if state is not None else [[] for _ in range(batch)]
            made.extend(PrefixRow(decision.prefix_terms, p, n_max) for p in start)
        return made

    return rows


class PrefixRow:
    """One sequence's prefix while decoding: the thresholds of decision.prefix_thresholds, to
    the bit, one token at a time.

    terms(n) gives the per-length terms m, w and (1 - w) theta (the Decision's own, tabled for
    the whole generation at once), and the blend a + w q is done in Python floats, each result
    rounded to float32: a double product or sum of two float32 values, rounded once to
    float32, is the float32 result (double rounding is exact for +, -, * when 53 >= 2 * 24 + 2
    bits). A token then costs one insertion and a few float operations.
    """

    def __init__(self, terms: Callable[[Tensor], tuple[Tensor, Tensor, Tensor]],
                 logits: list[float], n_max: int = 0):
        self.terms = terms
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
        m, w, a = self.terms(torch.arange(n_max + 1))
        self.m, self.w, self.a = m.tolist(), w.tolist(), a.tolist()


def _f32(v: float, _s=struct.Struct("f")) -> float:
    """v rounded to the nearest float32 (an exact Python float)."""
    try:
        return _s.unpack(_s.pack(v))[0]
    except OverflowError:  # beyond float32's range: struct refuses, float32 gives +-inf
        return float(np.float32(v))


@contextmanager
def native_cpu_kernels(device: torch.device):
    """oneDNN off on the CPU (process-wide, for the generation): ATen's GELU has the smaller
    fixed cost at decode sizes. The two GELUs agree to float rounding (~1e-7); matmuls use
    MKL either way."""
    if device.type != "cpu":
        yield
        return
    was = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = was
