"""Autoregressive sampling with a KV cache, for vanilla and Mixture-of-Depths models.

MoD decodes with its causal routing (Raposo et al. 2024, sec. 3.5): at a routed layer a token
runs the block iff its layer's Decision (decision.py) routes it, the prompt's decision logits
included in the prefix a `threshold: prefix` decision continues. A routed token writes its keys
and values into that layer's cache and attends over what is cached there (its row's earlier
routed tokens and itself, RoPE at original positions), its update scaled by g(r) as in
training. A token that skips neither reads nor writes that layer's cache; its residual passes
unchanged. So caches have a length per layer and per row: preallocated (B, nh, size, hs)
buffers that grow by doubling, per-row lengths on the host, and a key mask when the rows of a
batch differ. At batch 1 a skipping token skips the block outright, so decoding really gets
cheaper. At batch B > 1 the block runs on the routed rows only; one routed row (the usual case
at small capacity) runs on views of its own cache row: no gathers, no mask.

The prompt is prefilled by the model's own causal forward pass (Transformer.forward with
caches), and each decode step calls every layer module with its cache (so forward hooks fire
there too): cached decoding computes what a full causal forward computes. `Decoder` is that
loop in plain module calls; the model's kernels (ops.Kernels.decoder) may supply a faster one.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:  # annotations only: the state is the Decision's, begun at the prefill
    from modexp.models.decision import DecisionState


# ---------------------------------------------------------------- the cache
class KVCache:
    """One layer's keys and values (B, nh, size, hs); row b holds lengths[b] tokens.

    The buffers grow by doubling up to max_len: a routed layer's cache only ever holds the
    tokens routed there, so MoD's smaller caches show in memory too.
    """

    def __init__(self, batch: int, n_heads: int, head_size: int, max_len: int, size: int,
                 dtype: torch.dtype, device: torch.device, routed: bool = False):
        self.max_len = max_len
        shape = (batch, n_heads, min(size, max_len), head_size)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros_like(self.k)
        self.lengths = [0] * batch  # host ints: attention shapes depend on them
        self.decoding = False  # set once the prompt is in: each call is then a decode step
        # A routed layer's decision state, begun by the prefill from the prompt's decision
        # logits (decision.Decision.begin), continued by its decode steps
        self.decision: DecisionState | None = None
        self.decisions: list | None = [] if routed else None  # per decode step: who routed
        self.bound: object = None  # what a fast decode path binds for this layer (kernels/)

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
    capacity = {i: b.capacity for i, b in model.routed()}
    sizes = [max(16, math.ceil(2 * capacity[i] * max_len)) if i in capacity else max_len
             for i in range(len(model.blocks))]
    return [KVCache(batch, cfg.n_heads, hs, max_len, n, p.dtype, p.device, routed=i in capacity)
            for i, n in enumerate(sizes)]


# ---------------------------------------------------------------- one generation's steps
class Decoder:
    """The prefill and the decode steps of one generation, through the model's own modules.

    A context manager, so a faster decoder (modexp/kernels/decode.py) can bind what a
    generation keeps fixed (weights, tables) on entry and let it go on exit.
    """

    def __init__(self, model, caches: list[KVCache]):
        self.model, self.caches = model, caches
        index = torch.arange(caches[0].max_len, device=model.head.weight.device).unsqueeze(0)
        self.positions = model.rotary.at(index).split()  # looked up once per generation

    def __enter__(self) -> Decoder:
        return self

    def __exit__(self, *exc) -> None:
        return None

    def prefill(self, prompt: Tensor) -> Tensor:
        """Fill the caches with the prompt (B, P): the logits (B, V) after its last token."""
        return self.model(prompt, routing="causal", caches=self.caches).logits[:, -1]

    def step(self, tok: Tensor, p: int) -> Tensor:
        """Logits (B, V) for the next token after tok (B, 1), which sits at position p."""
        x = self.model.embed(tok)  # (B, 1, d)
        pos = self.positions[p]
        for block, cache in zip(self.model.blocks, self.caches):
            x, _ = block(x, pos, "causal", cache)
        return self.model.final(x)[:, -1]


# ---------------------------------------------------------------- sampling
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
    model.set_draws(0, 0)  # drawn routing (random_routing.py): rows 0..B-1 of the eval pattern
    B, P = prompt.shape
    dev = prompt.device
    model.rotary.reserve(P + max_new_tokens)  # RoPE for every position, before any forward
    caches = make_caches(model, B, P + max_new_tokens)
    pick = Sampler(temperature, top_k, seed, B, model.vocab, dev, max_new_tokens)
    out = []  # (B, 1) per new token
    kept = []
    with model.kernels.decoder(model, caches) as decoder:
        t0 = time.perf_counter()
        logits = decoder.prefill(prompt)  # (B, V)
        for cache in caches:  # the prompt is in: from here on, one token per row and step
            cache.decoding = True
        _sync(dev)
        t1 = time.perf_counter()
        for s in range(max_new_tokens):
            if keep_logits:
                kept.append(logits.clone())
            out.append(pick(logits) if feed is None else feed[:, s:s + 1])
            if s + 1 < max_new_tokens:
                logits = decoder.step(out[-1], P + s)
        _sync(dev)
        t2 = time.perf_counter()
    model.train(was_training)
    decisions = [c.decisions for c in caches if c.decisions is not None]
    routed = stack_decisions(decisions, B) if decisions and max_new_tokens > 1 else None
    return Generation(torch.cat([prompt, *out], dim=1), max_new_tokens, routed, t1 - t0,
                      t2 - t1, caches, kept)


def stack_decisions(decisions: list[list], batch: int) -> Tensor:
    """(R, steps, B) bool from per-layer lists of per-step decisions: a bool (a batch-1 fast
    path) or a (B,) bool tensor each."""
    layers = [torch.tensor(d, dtype=torch.bool).unsqueeze(-1) if isinstance(d[0], bool)
              else torch.stack(d).cpu() for d in decisions]
    return torch.stack(layers)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
