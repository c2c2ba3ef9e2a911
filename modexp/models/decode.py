"""Autoregressive sampling with a KV cache, for vanilla and Mixture-of-Depths models.

MoD decodes with its causal routing (../shared/design/mixture-of-depths.md, "Decoding with a
KV cache"): at a routed layer a token runs the block iff its decision logit (the predictor's,
or the router's for causal: aux_loss) passes the layer's threshold: the calibrated buffer
(calibrate.py), bound once per generation as a host float, or for `threshold: prefix` the
threshold of its row's prefix so far (decision.py), the prompt's logits included. A routed token writes its keys and values into
that layer's cache and attends over what is cached there (its row's earlier routed tokens and
itself, RoPE at original positions), its update scaled by g(r) as in training. A token that
skips neither reads nor writes that layer's cache; its residual passes unchanged. So caches
have a length per layer and per row: preallocated (B, nh, size, hs) buffers that grow by
doubling, per-row lengths on the host, and a key mask when the rows of a batch differ. At
batch 1 a skipping token skips the block outright, so decoding really gets cheaper. At batch
B > 1 the block runs on the routed rows only; one routed row (the usual case at small
capacity) runs as at batch 1, on views of its own cache row: no gathers, no mask.

The prompt is prefilled by the model's own causal-mode forward pass (Transformer.forward
with caches), so cached decoding computes exactly what a full causal forward computes.

Batch-1 decoding on a CPU is bound by each op's fixed cost (microseconds, as long as the
arithmetic of a 192-wide layer), so the decode loop keeps ops and allocations out of it:
inference_mode, caches allocated up front, RoPE tables and the permuted qkv weights of RoPE's
paired path (rope.py) made once per generation, routing decisions as matrix-vector products
with the weights bound once (decision.decider, which also hands the routed token's router
logit to the gate), the LM head as one mm (Ends), Gumbel-max sampling, and oneDNN off (its
exact GELU costs ~9 us a call, ATen's ~1 us).
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from modexp.models.decision import batch_decider, decider
from modexp.models.rope import paired_path


# ---------------------------------------------------------------- the cache
class KVCache:
    """One layer's keys and values (B, nh, size, hs); row b holds lengths[b] tokens.

    The buffers grow by doubling up to max_len: a routed layer's cache only ever holds the
    tokens routed there, so MoD's smaller caches show in memory too.
    """

    def __init__(self, batch: int, n_heads: int, head_size: int, max_len: int, size: int,
                 dtype: torch.dtype, device: torch.device):
        self.max_len = max_len
        shape = (batch, n_heads, min(size, max_len), head_size)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros_like(self.k)
        self.lengths = [0] * batch  # host ints: attention shapes depend on them
        # A routed layer's decision logits of the prompt (B, P), left by the prefill: where a
        # `threshold: prefix` decision (modexp/models/decision.py) resumes while decoding
        self.decision_logits: Tensor | None = None

    def extend(self, k: Tensor, v: Tensor, mask: Tensor | None,
               rows: _Rows | None = None) -> tuple[Tensor, Tensor, Tensor | None]:
        """Store new keys/values (n, nh, t, hs) of `rows` (None: all); return what to attend to."""
        if k.size(2) > 1:
            return self._prefill(k, v, mask)
        if rows is None and len(set(self.lengths)) == 1:  # aligned rows: slice, no mask
            n = self.lengths[0]
            self._reserve(n + 1)
            self.k[:, :, n:n + 1].copy_(k)
            self.v[:, :, n:n + 1].copy_(v)
            self.lengths = [n + 1] * len(self.lengths)
            return self.k[:, :, :n + 1], self.v[:, :, :n + 1], None
        if rows is not None and len(rows.ids) == 1:
            return self._extend_row(k, v, rows.ids[0])
        return self._extend_ragged(k, v, rows)

    def _extend_row(self, k: Tensor, v: Tensor, r: int):
        """One row r alone, as at batch 1: write at its length, attend over its slice, no mask.

        The common case of a routed layer at small capacity (one row in eight routes at 12.5%):
        views of row r's cache, no index tensors, no gather of keys, no masked attention.
        """
        n = self.lengths[r]
        self._reserve(n + 1)
        self.k[r:r + 1, :, n:n + 1].copy_(k)  # (1, nh, 1, hs)
        self.v[r:r + 1, :, n:n + 1].copy_(v)
        self.lengths[r] = n + 1
        return self.k[r:r + 1, :, :n + 1], self.v[r:r + 1, :, :n + 1], None  # (1, nh, n+1, hs)

    def _extend_ragged(self, k: Tensor, v: Tensor, rows: _Rows | None):
        """Write each row's token at its own length; keys masked beyond each row's length."""
        ids = range(len(self.lengths)) if rows is None else rows.ids
        lens = [self.lengths[r] for r in ids]
        s = max(lens) + 1  # longest selected row after the write: keys beyond are never read
        self._reserve(s)
        at = torch.arange(len(ids), device=k.device) if rows is None else rows.at  # (n,)
        slot = torch.tensor(lens, device=k.device)  # (n,) each row's write position
        self.k[at, :, slot] = k[:, :, 0]  # (n, nh, hs) scattered to (row, :, slot)
        self.v[at, :, slot] = v[:, :, 0]
        for r in ids:
            self.lengths[r] += 1
        keys, vals = self.k[:, :, :s], self.v[:, :, :s]  # (B, nh, s, hs) views
        if rows is not None:
            keys, vals = keys.index_select(0, at), vals.index_select(0, at)  # (n, nh, s, hs)
        if len(set(lens)) == 1:  # equal lengths: every key up to s is the row's own
            return keys, vals, None
        mask = torch.arange(s, device=k.device) <= slot.unsqueeze(1)  # (n, s): own slots only
        return keys, vals, mask[:, None, None, :]  # (n, 1, 1, s)

    def _prefill(self, k: Tensor, v: Tensor, mask: Tensor | None):
        """A prompt's t tokens (B, nh, t, hs), attending among themselves under their mask."""
        if any(self.lengths) or k.size(0) != len(self.lengths):
            raise RuntimeError("prefill needs an empty cache and every row of the batch")
        t = k.size(2)
        self._reserve(t)
        self.k[:, :, :t].copy_(k)
        self.v[:, :, :t].copy_(v)
        self.lengths = [t] * len(self.lengths)
        return k, v, mask

    def _reserve(self, n: int) -> None:
        """Room for n tokens per row: double the buffers (amortised O(1) per token)."""
        size = self.k.size(2)
        if n <= size:
            return
        if n > self.max_len:
            raise RuntimeError(f"KV cache full: {n} tokens > max_len {self.max_len}")
        new = min(self.max_len, max(n, 2 * size))
        for name in ("k", "v"):
            old = getattr(self, name)
            buf = old.new_zeros(old.size(0), old.size(1), new, old.size(3))
            buf[:, :, :size] = old
            setattr(self, name, buf)

    def keep(self, counts: list[int]) -> None:
        """After a routed prefill: row b holds counts[b] routed tokens (the rest was padding)."""
        self.lengths = list(counts)

    def rows(self, ids: list[int], at: Tensor | None) -> _Rows:
        """The cache as seen by a block that runs on rows `ids` only; at: ids as a tensor (n,)."""
        return _Rows(self, ids, at)

    @property
    def nbytes(self) -> int:
        """Bytes held by the key and value buffers."""
        return 2 * self.k.numel() * self.k.element_size()


class _Rows:
    """Rows of a KVCache, ids on the host, at (n,) on the device (None for one row: unused)."""

    def __init__(self, cache: KVCache, ids: list[int], at: Tensor | None):
        self.cache, self.ids, self.at = cache, ids, at

    def extend(self, k: Tensor, v: Tensor, mask: Tensor | None):
        """Store and attend for the selected rows only."""
        return self.cache.extend(k, v, mask, self)


def make_caches(model, batch: int, max_len: int) -> list[KVCache]:
    """One empty cache per layer: dense ones sized for every token, routed ones for ~2c of them."""
    cfg, p = model.cfg, model.head.weight
    hs = cfg.d_model // cfg.n_heads
    sizes = [max_len if r is None else max(16, math.ceil(2 * r.capacity * max_len))
             for _, r in model.layers()]
    return [KVCache(batch, cfg.n_heads, hs, max_len, n, p.dtype, p.device) for n in sizes]


# ---------------------------------------------------------------- one decode step
def routed_step(router, decide, block, x: Tensor, angles,
                cache: KVCache) -> tuple[Tensor, Tensor | bool]:
    """One token per row (B, 1, d) through a routed layer by its causal decision; (x, go).

    decide: the layer's decision with its weights bound, decision.decider at batch 1 (the
    router logit if the token routes, else None), else decision.batch_decider ((B,) bool).
    Every op costs its fixed overhead at these sizes, so the block runs on the routed rows
    through the cheapest path their number allows.
    """
    if x.size(0) == 1:  # batch 1: a skipping token skips the whole block
        r = decide(x)
        return (x, False) if r is None else (router.step_one(x, block, angles, cache, r), True)
    go = decide(x)
    ids = [b for b, g in enumerate(go.tolist()) if g]  # host sync: shapes depend on it
    if not ids:
        return x, go
    if len(ids) == x.size(0):
        return x + router.step_update(x, block, angles, cache), go
    if len(ids) == 1:  # the usual case at small capacity: row r alone, as at batch 1
        r = ids[0]
        upd = router.step_update(x[r:r + 1], block, angles, cache.rows(ids, None))
        out = x.clone()
        out[r:r + 1] += upd  # x[r] + upd, as index_add computes it
        return out, go
    at = torch.tensor(ids, device=x.device)  # (n,)
    upd = router.step_update(x.index_select(0, at), block, angles, cache.rows(ids, at))
    return x.index_add(0, at, upd), go


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


def decode_step(ends: Ends, layers: list, tok: Tensor, angles: tuple[Tensor, Tensor],
                caches: list[KVCache], decisions: list[list]) -> Tensor:
    """Logits (B, V) for the next token after tok (B, 1), at the RoPE angles of its position."""
    x = ends.embed_tokens(tok)  # (B, 1, d)
    r = 0
    for (block, router, decide), cache in zip(layers, caches):
        if router is None:
            x = x + block.update(x, angles, None, cache)
        else:
            x, go = routed_step(router, decide, block, x, angles, cache)
            decisions[r].append(go)
            r += 1
    return ends.logits(x)


class Sampler:
    """Next tokens (B,) from logits (B, V): greedy at temperature 0, else seeded sampling.

    Sampling is Gumbel-max (argmax of logits / T + Gumbel noise draws exactly from the
    softmax), with the noise drawn in blocks of steps: two ops per step instead of softmax and
    multinomial, which matters at batch 1 where every op's fixed cost dominates.
    """

    def __init__(self, temperature: float, top_k: int | None, seed: int, batch: int,
                 vocab: int, device: torch.device, steps: int):
        self.inv_t = 1.0 / temperature if temperature > 0 else 0.0
        self.top_k = top_k if top_k is not None and top_k < vocab else None
        self.gen = torch.Generator(device).manual_seed(seed)
        self.shape, self.device = (batch, vocab), device
        self.block = min(steps, max(1, 2 ** 16 // (batch * vocab)))  # steps of noise per draw
        self.noise, self.at = (), self.block

    def __call__(self, logits: Tensor) -> Tensor:
        """Pick one token per row: (B, 1)."""
        if not self.inv_t:
            return logits.argmax(-1, keepdim=True)
        if self.top_k is not None:  # only the k most likely tokens stay possible
            kth = logits.topk(self.top_k, dim=-1).values[:, -1:]  # (B, 1)
            logits = logits.masked_fill(logits < kth, float("-inf"))
        noisy = torch.add(self._gumbel(), logits, alpha=self.inv_t)  # one op: logits / T + G
        return noisy.argmax(-1, keepdim=True)

    def _gumbel(self) -> Tensor:
        """Standard Gumbel noise (B, V) for this step."""
        if self.at == self.block:
            u = torch.rand((self.block, *self.shape), generator=self.gen, device=self.device)
            g = -torch.log(-torch.log(u))  # u = 0 gives -inf: never picked
            self.noise, self.at = g.unbind(0), 0  # per-step views, taken once
        self.at += 1
        return self.noise[self.at - 1]


# ---------------------------------------------------------------- generation
@dataclass
class Generation:
    """Tokens, routing decisions and timings of one generate() call."""

    tokens: Tensor  # (B, P + n): the prompt, then n generated tokens
    n_new: int
    routed: Tensor | None  # (R, n - 1, B) bool: each routed layer's decision per decoded token
    prefill_s: float
    decode_s: float  # the n - 1 decode steps (the first new token comes from the prefill)
    caches: list[KVCache] = field(repr=False)
    logits: list[Tensor] = field(default_factory=list, repr=False)  # (B, V) per new token

    @property
    def decode_steps(self) -> int:
        """New tokens fed back through the model."""
        return max(self.n_new - 1, 0)

    @property
    def decode_tokens_per_s(self) -> float:
        """Tokens decoded per second, all rows together."""
        return self.tokens.size(0) * self.decode_steps / max(self.decode_s, 1e-9)

    def routed_frac(self) -> list[float]:
        """Per routed layer: the fraction of decoded tokens that ran its block."""
        if self.routed is None or self.routed.numel() == 0:
            return []
        return self.routed.float().mean(dim=(1, 2)).tolist()


@torch.inference_mode()
def generate(model, prompt: Tensor, max_new_tokens: int, temperature: float = 0.0,
             top_k: int | None = None, seed: int = 0, keep_logits: bool = False,
             feed: Tensor | None = None) -> Generation:
    """Sample max_new_tokens after prompt (B, P), every row alike, with per-layer KV caches.

    feed (B, n): teacher forcing, feed these tokens instead of the sampled ones (tests).
    """
    was_training = model.training
    model.eval()
    B, P = prompt.shape
    dev = prompt.device
    caches = make_caches(model, B, P + max_new_tokens)
    layers = [(b, r, None if r is None else decider(r, c) if B == 1 else batch_decider(r, c))
              for (b, r), c in zip(model.layers(), caches)]  # decisions with their weights bound
    n_routed = sum(r is not None for _, r, _ in layers)
    pick = Sampler(temperature, top_k, seed, B, model.vocab, dev, max_new_tokens)
    rope = rope_table(layers[0][0].attn.rotary, P + max_new_tokens, model.head.weight.dtype)
    ends = Ends(model)
    out = []  # (B, 1) per new token
    decisions: list[list] = [[] for _ in range(n_routed)]
    kept = []
    with native_cpu_kernels(dev), paired_weights_bound(model, dev):
        t0 = time.perf_counter()
        logits = model(prompt, routing="causal", caches=caches).logits[:, -1]  # (B, V) prefill
        _sync(dev)
        t1 = time.perf_counter()
        for s in range(max_new_tokens):
            if keep_logits:
                kept.append(logits.clone())
            out.append(pick(logits) if feed is None else feed[:, s:s + 1])
            if s + 1 < max_new_tokens:
                logits = decode_step(ends, layers, out[-1], rope[P + s], caches, decisions)
        _sync(dev)
        t2 = time.perf_counter()
    model.train(was_training)
    routed = stack_decisions(decisions, B) if n_routed and max_new_tokens > 1 else None
    return Generation(torch.cat([prompt, *out], dim=1), max_new_tokens, routed, t1 - t0,
                      t2 - t1, caches, kept)


def rope_table(rotary, n: int, dtype: torch.dtype) -> list:
    """RoPE tables of positions 0..n-1, one entry per position, looked up once: e^{i theta}
    (1, 1, 1, hs/2) for the paired path, else (cos, sin), each (1, 1, 1, hs/2) (rope.py).

    Every layer's Rotary is the same function of position; these are the rows the full
    forward's lookups gather at each position, so decoding rotates bit-identically.
    """
    rotary.reserve(n)
    pos = torch.arange(n, device=rotary.inv_freq.device).unsqueeze(0)  # (1, n)
    if paired_path(dtype, pos.device.type):
        return list(rotary.lookup_cis(pos, dtype).split(1, dim=1))
    cos, sin = rotary.lookup(pos, dtype)  # (1, n, 1, hs/2)
    return list(zip(cos.split(1, dim=1), sin.split(1, dim=1)))


def stack_decisions(decisions: list[list], batch: int) -> Tensor:
    """(R, steps, B) bool from per-layer lists of bools (batch 1) or (B,) tensors."""
    if batch == 1:
        return torch.tensor(decisions, dtype=torch.bool).unsqueeze(-1)
    return torch.stack([torch.stack(d) for d in decisions]).cpu()


@contextmanager
def paired_weights_bound(model, device: torch.device):
    """Within: every attention's permuted qkv weight (rope.py's paired path) made once, not per
    token; the weights must not change meanwhile (a generation runs in inference mode)."""
    attns = [b.attn for b in model.blocks] if paired_path(model.head.weight.dtype, device.type) else []
    for attn in attns:
        attn.bound = attn.paired_weight()
    try:
        yield
    finally:
        for attn in attns:
            attn.bound = None


@contextmanager
def native_cpu_kernels(device: torch.device):
    """oneDNN off on CPU: its exact-GELU primitive costs ~9 us a call at decode sizes, ATen's ~1 us.

    The two GELUs agree to float rounding (~1e-7); matmuls use MKL either way.
    """
    if device.type != "cpu":
        yield
        return
    was = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = was


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
