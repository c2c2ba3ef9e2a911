"""A nanoGPT-style decoder-only transformer, vanilla or Mixture-of-Depths, read top to bottom.

Token embedding -> pre-norm blocks (RMSNorm, causal self-attention with RoPE, MLP) -> final
RMSNorm -> LM head. No biases anywhere in the LM: flops.py counts none, and the parameter
count must match it exactly. A Mixture-of-Depths model (Raposo et al. 2024, arXiv 2404.02258)
is the same stack of the same `Block`s; its routed layers wrap a block with a router
(modexp/mod.py) that sends only the top-k tokens of each sequence through it.

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

from modexp.mod import RoutedLayer, route_losses, route_stats, stream_seed
from modexp.spec import ModelConfig, ModVariant, VanillaVariant

if TYPE_CHECKING:  # the cache lives with the decoder; the model only passes it through
    from modexp.decode import KVCache


@dataclass
class ForwardOutput:
    """What one forward pass returns; every loss is a scalar tensor or None."""

    logits: Tensor | None  # (B, T, V)
    loss: Tensor | None  # lm_loss + aux_loss_weight * aux_loss + predictor_loss: what to backprop
    lm_loss: Tensor | None  # mean next-token cross-entropy
    aux_loss: Tensor | None  # router BCE, mean over routed layers (causal: aux_loss)
    predictor_loss: Tensor | None  # predictor BCE, mean over routed layers (causal: predictor)
    stats: dict[str, Tensor] = field(default_factory=dict)  # detached; no host sync needed


# ---------------------------------------------------------------- rotary position embedding
class Rotary(nn.Module):
    """RoPE (Su et al. 2021) from explicit integer positions, so gathered tokens keep theirs."""

    def __init__(self, head_size: int, base: float):
        super().__init__()
        inv_freq = base ** (-torch.arange(0, head_size, 2, dtype=torch.float32) / head_size)
        self.register_buffer("inv_freq", inv_freq, persistent=False)  # (hs/2,)

    def angles(self, pos: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """cos, sin of shape (B, t, 1, 1, hs/2) for positions pos (B, t)."""
        theta = pos.unsqueeze(-1).to(torch.float32) * self.inv_freq  # (B, t, hs/2)
        theta = theta[:, :, None, None, :]  # broadcast over (q|k, heads)
        return theta.cos().to(dtype), theta.sin().to(dtype)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate pairs (x1_i, x2_i) of the last dim of x by each token's angles."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


# ---------------------------------------------------------------- attention
class Attention(nn.Module):
    """Multi-head causal self-attention, factored so a KV cache can slot in between steps."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.head_size = cfg.n_heads, cfg.d_model // cfg.n_heads
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.rotary = Rotary(self.head_size, cfg.rope_base)

    def project(self, x: Tensor) -> Tensor:
        """Fused q, k, v projection of x (B, t, d): (B, t, 3, nh, hs)."""
        B, t, _ = x.shape
        return self.qkv(x).view(B, t, 3, self.n_heads, self.head_size)

    def rotate(self, qkv: Tensor, pos: Tensor | tuple[Tensor, Tensor]) -> tuple[Tensor, ...]:
        """RoPE on q and k at positions pos (B, t) (or (1, t)); q, k, v each (B, nh, t, hs).

        pos may also be angles (cos, sin) from Rotary.angles: a decode step computes them once
        for all layers (every layer's Rotary is the same function of position).
        """
        angles = pos if isinstance(pos, tuple) else self.rotary.angles(pos, qkv.dtype)
        cos, sin = angles  # (B, t, 1, 1, hs/2)
        qk = apply_rotary(qkv[:, :, :2], cos, sin)  # q and k in one pass: (B, t, 2, nh, hs)
        q, k, v = qk[:, :, 0], qk[:, :, 1], qkv[:, :, 2]  # (B, t, nh, hs)
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, nh, t, hs)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        """Attention output (B, t, d) under mask (B, 1, t, s); mask None: causal by order.

        A single query with mask None (a decode step over a KV cache) sees every key: SDPA's
        is_causal would align it with the first key instead (top-left), so it is not used.
        """
        causal = mask is None and q.size(2) > 1
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
        # y: (B, nh, t, hs)
        B, nh, t, hs = y.shape
        return self.proj(y.transpose(1, 2).reshape(B, t, nh * hs))  # (B, t, d)

    def forward(self, x: Tensor, pos: Tensor, mask: Tensor | None = None,
                cache: KVCache | None = None) -> Tensor:
        """Self-attention of the t tokens in x (B, t, d) at positions pos (B, t).

        With a cache (sampling), the new keys and values are stored there and the queries
        attend over everything the cache holds (modexp/decode.py), under the mask it returns.
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
        a = self.attn(self.norm1(x), pos, mask, cache)  # (B, t, d)
        m = self.mlp(self.norm2(x + a))
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
        x = self.embed(idx)  # (B, T, d)
        infos = []
        for i, (block, router) in enumerate(self.layers()):
            cache = caches[i] if caches is not None else None
            if router is None:
                x = x + block.update(x, pos, None, cache)
            else:
                x, info = router(x, block, pos, routing, cache)
                infos.append(info)
        logits = self.head(self.norm(x))  # (B, T, V)
        return self._output(logits, targets, infos, B * T)

    def _output(self, logits: Tensor, targets: Tensor | None, infos: list,
                n_tokens: int) -> ForwardOutput:
        """Assemble losses and detached stats from the routed layers' RouteInfo."""
        aux, pred = route_losses(infos)
        stats = route_stats(infos, n_tokens, logits.device) if infos else {}
        if targets is None:
            return ForwardOutput(logits, None, None, aux, pred, stats)
        lm = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1))
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
