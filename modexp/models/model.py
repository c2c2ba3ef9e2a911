"""A nanoGPT-style decoder-only transformer, vanilla or Mixture-of-Depths, read top to bottom.

Token embedding -> pre-norm blocks (RMSNorm, causal self-attention with RoPE, MLP) -> final
RMSNorm -> LM head. No biases anywhere in the LM: flops.py counts none, and the parameter
count must match it exactly. A Mixture-of-Depths model (Raposo et al. 2024, arXiv 2404.02258)
is the same stack of the same `Block`s; its routed layers wrap a block with a router
(modexp/models/mod.py) that sends only the top-k tokens of each sequence through it.

Every block exposes its update f(x) = block(x) - x separately (`Block.update`): a dense layer
computes x + f(x), a routed layer x + g(r) * f(x~) on the gathered tokens x~. So a routed
layer at capacity 1 with g = 1 computes bit for bit what the dense layer computes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from modexp.models import attention
from modexp.models.mod import RoutedLayer, at_least_fp32, route_losses, route_stats, stream_seed
from modexp.models.rope import (Rotary, _PairedRope, _PermuteRows, _Rope, paired_rows,
                                pairs_adjacent, rope, rope_pairs)
from modexp.spec import ModelConfig, ModVariant, VanillaVariant

if TYPE_CHECKING:  # the cache lives with the decoder; the model only passes it through
    from modexp.models.decode import KVCache


@dataclass
class ForwardOutput:
    """What one forward pass returns; every loss is a scalar tensor or None."""

    logits: Tensor | None  # (B, T, V)
    loss: Tensor | None  # lm_loss + aux_loss_weight * aux_loss + predictor_loss: what to backprop
    lm_loss: Tensor | None  # mean next-token cross-entropy
    aux_loss: Tensor | None  # router BCE, mean over routed layers (causal: aux_loss)
    predictor_loss: Tensor | None  # predictor BCE, mean over routed layers (causal: predictor)
    stats: dict[str, Tensor] = field(default_factory=dict)  # detached; no host sync needed


# ---------------------------------------------------------------- RMSNorm
class _RMSNormCPU(torch.autograd.Function):
    """F.rms_norm's fp32 CPU forward, op for op (bit-identical), with an analytic backward.

    On the CPU, torch 2.13's rms_norm is a composite of pow, mean, rsqrt and muls, and autograd
    differentiates each of them. The closed form, with x^ = x r, r = rsqrt(mean(x^2) + eps):
    dw = sum_n g x^ and dx = r (g w - x^ mean(g w x^)) = r g w - x r^3 (g x . w) / d; both
    reductions of t = g x are matrix-vector products (dw = r^T t, t w), so the backward makes
    four passes over (N, d) where the textbook order makes eight.
    """

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


def rms_norm(norm: nn.RMSNorm, x: Tensor) -> Tensor:
    """norm(x): F.rms_norm, or on CPU in fp32 with a gradient, _RMSNormCPU (same values)."""
    if x.device.type == "cpu" and x.dtype == torch.float32 and torch.is_grad_enabled():
        eps = norm.eps if norm.eps is not None else torch.finfo(x.dtype).eps
        return _RMSNormCPU.apply(x, norm.weight, eps)
    return F.rms_norm(x, norm.normalized_shape, norm.weight, norm.eps)


# ---------------------------------------------------------------- attention
class Attention(nn.Module):
    """Multi-head causal self-attention, factored so a KV cache can slot in between steps."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.head_size = cfg.n_heads, cfg.d_model // cfg.n_heads
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.rotary = Rotary(self.head_size, cfg.rope_base)
        self._rows: tuple[Tensor, Tensor] | None = None  # paired_rows and their inverse
        # decode.py binds the permuted weight for a whole generation (its weights are fixed);
        # no cache keyed on the weight's version: fused AdamW updates in place without a bump
        self.bound: Tensor | None = None

    def project(self, x: Tensor) -> Tensor:
        """Fused q, k, v projection of x (B, t, d): (B, t, 3, nh, hs).

        On the paired RoPE path (rope.py) the q and k rows of the weight come permuted, each
        rotated pair adjacent; the parameter itself keeps the halves layout.
        """
        B, t, _ = x.shape
        w = self.paired_weight() if pairs_adjacent(x) else self.qkv.weight
        return F.linear(x, w).view(B, t, 3, self.n_heads, self.head_size)  # as self.qkv(x)

    def paired_weight(self) -> Tensor:
        """The qkv weight with its q and k rows permuted for the paired path: a differentiable
        copy while training, a plain one otherwise, or the copy `bound` holds (decoding)."""
        if self.bound is not None:
            return self.bound
        w = self.qkv.weight
        if self._rows is None or self._rows[0].device != w.device:
            rows = paired_rows(self.n_heads, self.head_size, w.device)
            self._rows = (rows, torch.argsort(rows))  # the order and its inverse
        if torch.is_grad_enabled() and w.requires_grad:
            return _PermuteRows.apply(w, *self._rows)
        return w.index_select(0, self._rows[0])

    def rotate(self, qkv: Tensor, pos: Tensor | tuple[Tensor, Tensor]) -> tuple[Tensor, ...]:
        """RoPE on q and k at positions pos (B, t) (or (1, t)); q, k, v each (B, nh, t, hs).

        pos may also be the tables of rope_table (decode.py): a decode step looks them up once
        for all layers (every layer's Rotary is the same function of position): e^{i theta}
        (complex) on the paired path, (cos, sin) on the halves path.
        """
        if pairs_adjacent(qkv):  # q and k rows arrive paired (project)
            cis = pos if pos.is_complex() else self.rotary.lookup_cis(pos, qkv.dtype)
            one = lambda t: _PairedRope.apply(t, cis)  # noqa: E731  (q or k, with a gradient)
            both = lambda qk: rope_pairs(qk, cis.unsqueeze(2))  # noqa: E731  (q and k together)
        else:
            cos, sin = pos if isinstance(pos, tuple) else self.rotary.lookup(pos, qkv.dtype)
            # cos, sin: (b, t, 1, hs/2)
            rot = rope if torch.compiler.is_compiling() else _Rope.apply  # compiled: autograd's
            one = lambda t: rot(t, cos, sin)  # noqa: E731
            both = lambda qk: rope(qk, cos.unsqueeze(2), sin.unsqueeze(2))  # noqa: E731
        if torch.is_grad_enabled() and qkv.requires_grad:
            # unbind's backward stacks the three grads (slices would zero-fill and copy them)
            q, k, v = qkv.unbind(2)  # (B, t, nh, hs)
            q, k = one(q), one(k)
        else:  # no gradient (eval, decode): q and k in one pass, fewer ops per token
            q, k = both(qkv[:, :, :2]).unbind(2)
            v = qkv[:, :, 2]
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, nh, t, hs)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        """Attention output (B, t, d) under mask (B, 1, t, s); mask None: causal by order.

        A single query with mask None (a decode step over a KV cache) sees every key: SDPA's
        is_causal would align it with the first key instead (top-left), so it is not used.
        """
        causal = mask is None and q.size(2) > 1
        if causal and attention.matmul_path(q):  # training only: eval and decoding keep SDPA
            y = attention.matmul_attention(q, k, v)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
        # y: (B, nh, t, hs)
        B, nh, t, hs = y.shape
        return self.proj(y.transpose(1, 2).reshape(B, t, nh * hs))  # (B, t, d)

    def forward(self, x: Tensor, pos: Tensor, mask: Tensor | None = None,
                cache: KVCache | None = None) -> Tensor:
        """Self-attention of the t tokens in x (B, t, d) at positions pos (B, t).

        With a cache (sampling), the new keys and values are stored there and the queries
        attend over everything the cache holds (modexp/models/decode.py), under the mask it returns.
        """
        q, k, v = self.rotate(self.project(x), pos)
        if cache is not None:
            k, v, mask = cache.extend(k, v, mask)
        return self.attend(q, k, v, mask)


# ---------------------------------------------------------------- MLP
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


# ---------------------------------------------------------------- block
class Block(nn.Module):
    """Pre-norm transformer block; `update` is its residual update f, forward x + f."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm1 = nn.RMSNorm(cfg.d_model)
        self.attn = Attention(cfg)
        self.norm2 = nn.RMSNorm(cfg.d_model)
        self.mlp = MLP(cfg)

    def update(self, x: Tensor, pos: Tensor, mask: Tensor | None = None,
               cache: KVCache | None = None) -> Tensor:
        """f(x) = block(x) - x (B, t, d), computed without the subtraction."""
        a = self.attn(rms_norm(self.norm1, x), pos, mask, cache)  # (B, t, d)
        m = self.mlp(rms_norm(self.norm2, x + a))
        return a + m

    def forward(self, x: Tensor, pos: Tensor, mask: Tensor | None = None) -> Tensor:
        """x + f(x): the dense layer."""
        return x + self.update(x, pos, mask)


# ---------------------------------------------------------------- the language model
class Transformer(nn.Module):
    """Decoder-only LM; with a ModVariant, routed layers use mod.RoutedLayer around the Block."""

    def __init__(self, model: ModelConfig, variant: VanillaVariant | ModVariant, vocab: int):
        super().__init__()
        self.cfg, self.variant, self.vocab = model, variant, vocab
        self.embed = nn.Embedding(vocab, model.d_model)
        # The same Block for every layer, so vanilla weights load into a MoD model unchanged.
        self.blocks = nn.ModuleList(Block(model) for _ in range(model.n_layers))
        caps = variant.capacities(model.n_layers) if variant.kind == "mod" else []
        self.routers = nn.ModuleDict({str(i): RoutedLayer(model.d_model, variant, c, i)
                                      for i, c in enumerate(caps) if c is not None})
        self.norm = nn.RMSNorm(model.d_model)
        self.head = nn.Linear(model.d_model, vocab, bias=False)
        if model.tie_embeddings:
            self.head.weight = self.embed.weight
        self._init_weights()

    def _init_weights(self) -> None:
        # GPT-2 (Radford et al. 2019): N(0, 0.02); residual projections scaled by 1/sqrt(2L)
        # so the residual stream's variance does not grow with depth.
        routing = set(self.routers.modules())  # drawn from their own streams, below
        for mod in self.modules():
            if isinstance(mod, (nn.Linear, nn.Embedding)) and mod not in routing:
                nn.init.normal_(mod.weight, mean=0.0, std=0.02)
                if getattr(mod, "bias", None) is not None:
                    nn.init.zeros_(mod.bias)
        resid_std = 0.02 / math.sqrt(2 * self.cfg.n_layers)
        for block in self.blocks:
            nn.init.normal_(block.attn.proj.weight, mean=0.0, std=resid_std)
            nn.init.normal_(block.mlp.proj.weight, mean=0.0, std=resid_std)
        # Routers and predictors: own generators seeded from the run seed (torch.manual_seed
        # before building), so the global stream (the LM's init) is the vanilla model's, and
        # no predictor setting moves a router's or the LM's weights.
        seed = torch.initial_seed()
        gens = [torch.Generator().manual_seed(stream_seed(seed, s)) for s in ("router", "predictor")]
        for router in self.routers.values():
            router.init_weights(*gens)

    def predictor_parameters(self) -> list[nn.Parameter]:
        """The causal predictors' parameters: trained apart from the LM (own optimiser, clip)."""
        return [p for r in self.routers.values() if r.predictor is not None
                for p in r.predictor.parameters()]

    def layers(self) -> list[tuple[Block, RoutedLayer | None]]:
        """Each layer's block and its router (None for a dense layer), in order."""
        return [(b, self.routers[str(i)] if str(i) in self.routers else None)
                for i, b in enumerate(self.blocks)]

    def forward(self, idx: Tensor, targets: Tensor | None = None, routing: str = "topk",
                caches: list[KVCache] | None = None) -> ForwardOutput:
        """Logits, losses and routing stats for tokens idx (B, T).

        routing="topk": expert-choice top-k per sequence (training; NOT causal: whether a token
        is routed depends on later tokens' router scores). routing="causal": each token decides
        alone (router or predictor logit > 0), as when sampling (MoD paper, sec. 3.5).
        caches (one per layer, empty): fill them with the prompt's keys and values (prefill).
        """
        if routing not in ("topk", "causal"):
            raise ValueError(f"routing must be 'topk' or 'causal', got {routing!r}")
        B, T = idx.shape
        pos = torch.arange(T, device=idx.device).unsqueeze(0)  # (1, T): original positions
        for block in self.blocks:  # RoPE tables cover T (a Python check once they do)
            block.attn.rotary.reserve(T)
        x = self.embed(idx)  # (B, T, d)
        infos = []
        for i, (block, router) in enumerate(self.layers()):
            cache = caches[i] if caches is not None else None
            if router is None:
                x = x + block.update(x, pos, None, cache)
            else:
                x, info = router(x, block, pos, routing, cache)
                infos.append(info)
        logits = self.head(rms_norm(self.norm, x))  # (B, T, V)
        return self._output(logits, targets, infos, B * T)

    def _output(self, logits: Tensor, targets: Tensor | None, infos: list,
                n_tokens: int) -> ForwardOutput:
        """Assemble losses and detached stats from the routed layers' RouteInfo."""
        aux, pred = route_losses(infos)
        stats = route_stats(infos, n_tokens, logits.device) if infos else {}
        if targets is None:
            return ForwardOutput(logits, None, None, aux, pred, stats)
        lm = F.cross_entropy(at_least_fp32(logits.reshape(-1, logits.size(-1))), targets.reshape(-1))
        loss = lm
        if aux is not None:
            loss = loss + self.variant.aux_loss_weight * aux
        if pred is not None:
            loss = loss + pred  # stop-gradient input: only the predictors learn from it
        return ForwardOutput(logits, loss, lm, aux, pred, stats)


def build_model(model: ModelConfig, variant: VanillaVariant | ModVariant,
                vocab: int) -> Transformer:
    """The LM described by a model config and a variant (vanilla or MoD)."""
    return Transformer(model, variant, vocab)
