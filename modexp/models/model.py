"""A nanoGPT-style decoder-only transformer, vanilla or Mixture-of-Depths.

Token embedding -> pre-norm blocks (block.py: RMSNorm, causal self-attention with RoPE, MLP)
-> final RMSNorm -> LM head. A Mixture-of-Depths model (Raposo et al. 2024, arXiv 2404.02258)
is the same stack; its routed layers are RoutedBlocks (mod.py): the same Block with a router
that sends only the top-k tokens of each sequence through it. Every layer is called as a
module, `block(x, pos, routing, cache) -> (x, route info or None)`, in training, evaluation,
prefill and decoding alike, so forward hooks, FSDP units and activation checkpointing apply
per layer.

Build models with modexp/models/build.py's `build_model`, which picks the kernels (ops.py)
for the device; `Transformer(...)` alone runs the plain-PyTorch reference.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from modexp.models.block import Block
from modexp.models.decision import Decision, at_least_fp32
from modexp.models.mod import RoutedBlock, route_losses, route_stats, stream_seed
from modexp.models.ops import REFERENCE, Kernels
from modexp.models.rope import Positions, Rotary
from modexp.spec import ModelConfig
from modexp.variants import VariantConfig, entry_of

if TYPE_CHECKING:  # the cache lives with the decoder; the model only passes it through
    from modexp.models.decode import KVCache

ROUTINGS = ("topk", "causal", "calibrate")
DEFAULT_MAX_LEN = 1024  # RoPE positions reserved when the builder is not told a seq_len


@dataclass
class ForwardOutput:
    """What one forward pass returns; every loss is a scalar tensor or None."""

    logits: Tensor | None  # (B, T, V)
    loss: Tensor | None  # lm_loss + aux_loss_weight * aux_loss + predictor_loss: what to backprop
    lm_loss: Tensor | None  # mean next-token cross-entropy
    aux_loss: Tensor | None  # router BCE, mean over routed layers (causal: aux_loss)
    predictor_loss: Tensor | None  # predictor BCE, mean over routed layers (causal: predictor)
    stats: dict[str, Tensor] = field(default_factory=dict)  # detached; no host sync needed
    quantiles: Tensor | None = None
    """Training top-k passes: (R,) this batch's capacity quantile of the decision logits, one per
    layer whose threshold training calibrates (`Transformer.tracked()`, in order):
    calibrate.fold_thresholds folds them into the thresholds after the step."""
    decision_logits: list[Tensor] | None = None
    """Causal passes: each learned routed layer's decision logits (B, T), in order (calibration
    pools them)."""


class Transformer(nn.Module):
    """Decoder-only LM; its routed layers (where the variant's `capacities` give a capacity)
    are the layer module of the variant's registry entry: RoutedBlocks for learned MoD."""

    def __init__(self, model: ModelConfig, variant: VariantConfig, vocab: int,
                 kernels: Kernels = REFERENCE, max_len: int = DEFAULT_MAX_LEN):
        super().__init__()
        self.cfg, self.variant, self.vocab, self.kernels = model, variant, vocab, kernels
        self.embed = nn.Embedding(vocab, model.d_model)
        # RoPE tables for positions 0..max_len-1, one set for every layer
        self.rotary = Rotary(model.d_model // model.n_heads, model.rope_base, max_len)
        n = model.n_layers
        caps = variant.capacities(n)
        # The same Block for every layer (a routed one adds its router), so vanilla weights
        # load into a MoD model unchanged.
        routed = layer_module(entry_of(variant).layer)  # the variant's routed layer
        self.blocks = nn.ModuleList(Block(model, kernels) if c is None
                                    else routed(model, variant, c, i, kernels)
                                    for i, c in enumerate(caps))
        self.norm = nn.RMSNorm(model.d_model)
        self.head = nn.Linear(model.d_model, vocab, bias=False)
        if model.tie_embeddings:
            self.head.weight = self.embed.weight
        self._init_weights()

    def _init_weights(self) -> None:
        # GPT-2 (Radford et al. 2019): N(0, 0.02); residual projections scaled by 1/sqrt(2L)
        # so the residual stream's variance does not grow with depth.
        routing = {m for _, b in self.routed() for part in (b.router, b.decision)
                   if part is not None for m in part.modules()}  # drawn from their own streams
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
        for _, block in self.routed():
            block.init_weights(*gens)

    # ------------------------------------------------------------ the layers
    def routed(self) -> list[tuple[int, RoutedBlock]]:
        """(index, block) of every routed layer, in order."""
        return [(i, b) for i, b in enumerate(self.blocks) if isinstance(b, RoutedBlock)]

    def decisions(self) -> list[Decision]:
        """The Decision of every routed layer with a learned router, in order."""
        return [b.decision for _, b in self.routed() if b.decision is not None]

    def tracked(self) -> list[Decision]:
        """The decisions whose threshold training calibrates: ForwardOutput.quantiles' order."""
        return [d for d in self.decisions() if d.tracks]

    def drawn(self) -> list[tuple[str, nn.Module]]:
        """(name, block) of every layer whose routing is drawn (random_routing.RandomRouting)."""
        return [(f"blocks.{i}", b) for i, b in enumerate(self.blocks)
                if getattr(b, "random", None) is not None]

    def set_draws(self, step: int, row: int) -> None:
        """Where the next forward's routing draws sit: the training step and the global batch
        row of its first sequence (random_routing.py; eval mode ignores the step)."""
        for _, b in self.drawn():
            b.random.set(step, row)

    def rank_local_buffers(self) -> list[str]:
        """Buffers each DDP rank sets for itself (the draws' first row): never broadcast."""
        return [f"{name}.random.{b}" for name, _ in self.drawn() for b in ("step", "row")]

    def predictor_parameters(self) -> list[nn.Parameter]:
        """The causal predictors' parameters: trained apart from the LM (own optimiser, clip)."""
        return [p for d in self.decisions() if d.predictor is not None
                for p in d.predictor.parameters()]

    def lm_parameters(self) -> list[nn.Parameter]:
        """Every parameter but the predictors', in the order the LM's optimiser (and the
        optimiser state in checkpoints) holds them: the embedding, every block's own, the
        routers, the final norm, the head (a tied head is the embedding, listed once)."""
        routers = [p for _, b in self.routed() if b.router is not None
                   for p in b.router.parameters()]
        routing = {id(p) for p in routers + self.predictor_parameters()}
        own = [p for b in self.blocks for p in b.parameters() if id(p) not in routing]
        order = [*self.embed.parameters(), *own, *routers, *self.norm.parameters(),
                 *self.head.parameters()]
        return list({id(p): p for p in order}.values())

    # ------------------------------------------------------------ the forward pass
    def positions(self, T: int, device: torch.device) -> Positions:
        """Positions 0..T-1 (1, T) and their RoPE angles, shared by every row."""
        if T > self.rotary.max_len:
            raise ValueError(f"sequence of {T} tokens: the model's RoPE tables cover "
                             f"{self.rotary.max_len} positions (build it with seq_len >= {T})")
        return self.rotary.at(torch.arange(T, device=device).unsqueeze(0))

    def final(self, x: Tensor) -> Tensor:
        """The final norm and the LM head: logits (B, t, V) of the residual stream x (B, t, d)."""
        return self.head(self.kernels.rms_norm(x, self.norm.weight, self.norm.eps))

    def forward(self, idx: Tensor, targets: Tensor | None = None, routing: str = "topk",
                caches: list[KVCache] | None = None) -> ForwardOutput:
        """Logits, losses and routing stats for tokens idx (B, T).

        routing="topk": expert-choice top-k per sequence (training; NOT causal: whether a token
        is routed depends on later tokens' router scores). routing="causal": each token decides
        alone (its Decision, decision.py), as when sampling (MoD paper, sec. 3.5).
        routing="calibrate": causal, each layer at its batch's own capacity quantile.
        caches (one per layer, empty): fill them with the prompt's keys and values (prefill).
        """
        if routing not in ROUTINGS:
            raise ValueError(f"routing must be one of {', '.join(ROUTINGS)}, got {routing!r}")
        B, T = idx.shape
        pos = self.positions(T, idx.device)  # original positions, (1, T)
        x = self.embed(idx)  # (B, T, d)
        infos = []
        for i, block in enumerate(self.blocks):
            x, info = block(x, pos, routing, caches[i] if caches is not None else None)
            if info is not None:
                infos.append(info)
        logits = self.final(x)  # (B, T, V)
        return self._output(logits, targets, infos, B * T)

    def _output(self, logits: Tensor, targets: Tensor | None, infos: list,
                n_tokens: int) -> ForwardOutput:
        """Assemble losses and detached stats from the routed layers' RouteInfo."""
        aux, pred = route_losses(infos)
        stats = route_stats(infos, n_tokens, logits.device) if infos else {}
        quantiles = [i.quantile for i in infos if i.quantile is not None]
        extra = {"quantiles": torch.stack(quantiles) if quantiles else None,
                 "decision_logits": [i.logit for i in infos if i.logit is not None] or None}
        if targets is None:
            return ForwardOutput(logits, None, None, aux, pred, stats, **extra)
        lm = F.cross_entropy(at_least_fp32(logits.reshape(-1, logits.size(-1))), targets.reshape(-1))
        loss = lm
        if aux is not None:
            loss = loss + self.variant.aux_loss_weight * aux
        if pred is not None:
            loss = loss + pred  # stop-gradient input: only the predictors learn from it
        return ForwardOutput(logits, loss, lm, aux, pred, stats, **extra)

    # ------------------------------------------------------------ checkpoints
    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """Checkpoints from before routers lived in their blocks (`routers.N.*`) load too."""
        remap_routers(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def layer_module(layer: type | str | None) -> type | None:
    """A registry entry's routed layer class: itself, or "module:Class" imported here (the
    variants' declarations name the torch side without importing it)."""
    if not isinstance(layer, str):
        return layer
    module, _, name = layer.partition(":")
    return getattr(importlib.import_module(module), name)


OLD_ROUTER_KEYS = {"router": "router", "predictor": "decision.predictor",
                   "threshold": "decision.threshold", "threshold_steps": "decision.threshold_steps",
                   "random": "random"}
"""Keys under `routers.N.` in checkpoints of the previous layout -> under `blocks.N.` now."""


def remap_routers(state_dict: dict, prefix: str = "") -> None:
    """Rename the previous layout's `routers.N.<part>...` keys in place to `blocks.N.<...>`."""
    old = prefix + "routers."
    for key in [k for k in state_dict if k.startswith(old)]:
        layer, part, *rest = key[len(old):].split(".", 2)
        if part not in OLD_ROUTER_KEYS:
            continue  # not ours: load_state_dict reports it as unexpected
        new = ".".join([f"{prefix}blocks.{layer}", OLD_ROUTER_KEYS[part], *rest])
        state_dict[new] = state_dict.pop(key)
