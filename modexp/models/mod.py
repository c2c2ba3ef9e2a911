"""Mixture-of-Depths (Raposo et al. 2024, arXiv 2404.02258): a Block that runs on the tokens
its router picks.

A routed layer l with capacity c on a sequence of T tokens:
1. router logit r_i = w_l . x_i (its own `Linear(d, 1)`, no bias: flops.py counts d params);
2. expert-choice top-k over the T positions of each sequence, k = max(1, floor(c*T)), the
   chosen indices SORTED by position (sort of the indices, not argsort of the scores), so the
   gathered tokens stay in causal order and `is_causal=True` masks them by original position;
3. a real gather of the k tokens x~, which run the whole block (attention among themselves
   only, RoPE at their original positions, MLP): the block's cost really falls to k tokens;
4. x_i + g(r_i) * f_i scattered back out of place for routed tokens, every other token passed
   through bit-identical. g is the identity (paper) or a sigmoid (bounded; our default).

So a routed layer at capacity 1 with g = 1 computes bit for bit what the dense layer computes.
Top-k is not causal; for evaluation and sampling each token decides alone by the layer's
`Decision` (decision.py), and a decode step (`RoutedBlock.step`) runs the block on the rows
whose new token routes, each with its own rows of the layer's KV cache.

The router and predictor draw their initial weights from generators of their own (seeded from
the run seed), never from the global stream: the LM's weights are the same whatever the
predictor's settings, and a MoD model's shared weights are those of the vanilla model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn
from torch.nn.utils import skip_init

from modexp.flops import routed_k
from modexp.models.block import Block
from modexp.models.decision import Decision, at_least_fp32
from modexp.models.rope import Positions
from modexp.spec import ModelConfig, ModVariant

if TYPE_CHECKING:  # annotations only: the kernels are handed in, the cache passed through
    from modexp.models.decode import KVCache
    from modexp.models.ops import Kernels

TOPK_CACHE = "a KV cache needs routing='causal': top-k routing is not causal"


@dataclass
class RouteInfo:
    """What one routed layer reports: its routing, losses and raw counts (B, T masks)."""

    idx: Tensor  # (B, k) sorted positions gathered (causal mode: padded, see `valid`)
    valid: Tensor | None  # (B, k) bool, causal mode only: False marks a padding slot
    n_routed: Tensor  # scalar int64: tokens that ran the block
    member: Tensor | None  # (B, T) float 0/1 top-k membership: the BCE target
    decision: Tensor | None  # (B, T) bool: the causal decision (logit > threshold)
    aux_loss: Tensor | None  # router-logit BCE (causal: aux_loss)
    predictor_loss: Tensor | None  # predictor BCE (causal: predictor)
    quantile: Tensor | None = None  # training: this batch's capacity quantile of the logits
    logit: Tensor | None = None  # causal passes: the decision logits (B, T)


class RoutedBlock(Block):
    """A Block with its router and its Decision: it runs its update on the top-k tokens of
    each sequence (training), or on those its decision routes (evaluation, decoding).

    Its parameters are the Block's plus the router's (and the predictor's), so a vanilla
    model's weights load into a MoD model unchanged.
    """

    def __init__(self, cfg: ModelConfig, variant: ModVariant, capacity: float, layer: int,
                 kernels: Kernels):
        super().__init__(cfg, kernels)
        self.capacity, self.gate = capacity, variant.gate
        # skip_init: no draw from the global RNG here; init_weights fills it from its own stream
        self.router = skip_init(nn.Linear, cfg.d_model, 1, bias=False)  # own router per layer
        self.decision = Decision(cfg.d_model, variant, capacity)

    @torch.no_grad()
    def init_weights(self, router_gen: torch.Generator, predictor_gen: torch.Generator) -> None:
        """N(0, 0.02) router weights (GPT-2) and the predictor's, each from its own generator."""
        nn.init.normal_(self.router.weight, 0.0, 0.02, generator=router_gen)
        self.decision.init_weights(predictor_gen)

    def forward(self, x: Tensor, pos: Positions, routing: str = "topk",
                cache: KVCache | None = None) -> tuple[Tensor, RouteInfo | None]:
        """x (B, T, d) -> (x with the routed tokens updated, RouteInfo).

        routing "topk" (training), "causal" (each token by its decision) or "calibrate"
        (causal, deciding at the batch's own capacity quantile: calibrate.py). cache
        (causal only): empty, it receives the routed tokens' keys and values (prefill); once
        it holds a prompt (decoding), x is one new token per row: a decode step (`step`).
        """
        if cache is not None and cache.decoding:
            return self.kernels.routed_step(self, x, pos, cache), None
        r = self.router_logits(x)  # (B, T)
        k = routed_k(self.capacity, x.size(1))
        if routing == "topk":
            if cache is not None:
                raise ValueError(TOPK_CACHE)
            return self._topk(x, pos, r, k)
        if routing not in ("causal", "calibrate"):
            raise ValueError(f"routing must be 'topk', 'causal' or 'calibrate', got {routing!r}")
        return self._causal(x, pos, r, k, routing == "calibrate", cache)

    def _topk(self, x: Tensor, pos: Positions, r: Tensor, k: int) -> tuple[Tensor, RouteInfo]:
        """Expert-choice routing: each row's k top-scoring tokens run the block."""
        idx = topk_positions(r, k)  # (B, k)
        out = self._run_topk(x, pos, r, idx)
        d = self.decision
        causal = d.method != "none"
        member = membership(idx, r) if causal else None
        n_routed = torch.full((), idx.numel(), dtype=torch.long, device=x.device)
        logit = d.logit(x, r) if causal else None
        quantile = d.quantile(logit) if self.training and d.tracks else None
        return out, self._info(logit, member, idx, None, n_routed, None, quantile)

    def _causal(self, x: Tensor, pos: Positions, r: Tensor, k: int, calibrate: bool,
                cache: KVCache | None) -> tuple[Tensor, RouteInfo]:
        """Each token decides alone (sampling's routing); scored against what top-k does."""
        d = self.decision
        logit = d.logit(x, r)  # (B, T)
        decision = logit > d.quantile(logit) if calibrate else d.decide(logit)  # (B, T)
        if cache is not None:  # the prompt's logits: where decoding's decisions continue
            cache.decision = d.begin(logit)
        out, idx, valid = self._run_causal(x, pos, r, decision, cache)
        member = membership(topk_positions(r, k), r)  # what top-k would have done, for stats
        info = self._info(logit, member, idx, valid, decision.sum(), decision)
        info.logit = logit
        return out, info

    def _run_topk(self, x: Tensor, pos: Positions, r: Tensor, idx: Tensor) -> Tensor:
        """Gather the k tokens of each row, run the block on them, add g(r) * f back."""
        B, T, d = x.shape
        flat = flat_index(idx, T)  # (B*k,) rows of x viewed as (B*T, d)
        xs = self.kernels.gather_rows(x.reshape(B * T, d), flat).view(B, -1, d)  # (B, k, d)
        f = self.update(xs, pos.gather(idx))  # (B, k, d), at their original positions
        upd = self.gated(r.gather(1, idx), f).to(x.dtype)
        # Out of place: every row not in `flat` is copied from x unchanged (bit-identical).
        return x.reshape(B * T, d).index_add(0, flat, upd.reshape(-1, d)).view(B, T, d)

    def _run_causal(self, x: Tensor, pos: Positions, r: Tensor, decision: Tensor,
                    cache: KVCache | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Route each token on its own decision; rows padded to the largest routed count."""
        B, T, d = x.shape
        counts = decision.sum(1)  # (B,)
        kmax = int(counts.max())  # host sync: shapes depend on data (eval / sampling only)
        index = pos.index.expand(B, T)
        # Routed tokens first, each group by position: the first counts[b] slots are row b's.
        idx = torch.where(decision, index, index + T).sort(dim=1).indices[:, :kmax]  # (B, kmax)
        valid = torch.arange(kmax, device=x.device) < counts.unsqueeze(1)  # (B, kmax)
        if kmax == 0:
            return x, idx, valid
        flat = flat_index(idx, T)
        xs = x.reshape(B * T, d).index_select(0, flat).view(B, kmax, d)
        ps = pos.gather(idx)  # original positions
        f = self.update(xs, ps, padded_causal_mask(ps.index, valid), cache)
        if cache is not None:  # padding slots were written too, but only routed tokens count
            cache.keep(counts.tolist())
        new = xs + self.gated(r.gather(1, idx), f).to(x.dtype)
        new = torch.where(valid.unsqueeze(-1), new, xs)  # padding slots write back x itself
        return x.reshape(B * T, d).index_copy(0, flat, new.reshape(-1, d)).view(B, T, d), idx, valid

    def step(self, x: Tensor, pos: Positions, cache: KVCache) -> Tensor:
        """Decode step: one new token per row x (B, 1, d) at position pos. A row whose token
        routes runs the block on its own cache rows (its earlier routed tokens); a row whose
        token skips neither reads nor writes this layer's cache, and passes x unchanged."""
        r, go = self.step_decision(x, pos, cache)
        cache.decisions.append(go)
        ids = go.nonzero().flatten().tolist()  # host sync: shapes depend on it
        if not ids:
            return x
        if len(ids) == x.size(0):
            return x + self.gated(r, self.update(x, pos, None, cache)).to(x.dtype)
        at = torch.tensor(ids, device=x.device)  # (n,)
        f = self.update(x.index_select(0, at), pos, None, cache.rows(ids, at))
        return x.index_add(0, at, self.gated(r.index_select(0, at), f).to(x.dtype))

    def step_decision(self, x: Tensor, pos: Positions, cache: KVCache) -> tuple[Tensor, Tensor]:
        """The new token's router logit (B, 1) and whether its decision routes it (B,)."""
        r = self.router_logits(x)  # (B, 1)
        return r, self.decision.decide_next(self.decision.logit(x, r), cache.decision)

    def router_logits(self, x: Tensor) -> Tensor:
        """Router logits (B, T) in fp32 even under autocast: bf16 would tie scores at top-k."""
        with torch.autocast(x.device.type, enabled=False):
            return self.router(at_least_fp32(x)).squeeze(-1)

    def gated(self, r: Tensor, f: Tensor) -> Tensor:
        """g(r) * f for r (B, k), f (B, k, d): the router weight on the gradient path."""
        g = torch.sigmoid(r) if self.gate == "sigmoid" else r
        return g.unsqueeze(-1) * f

    def _info(self, logit: Tensor | None, member: Tensor | None, idx: Tensor,
              valid: Tensor | None, n_routed: Tensor, decision: Tensor | None = None,
              quantile: Tensor | None = None) -> RouteInfo:
        """The causal method's loss against top-k membership, and the decision for stats."""
        aux = ploss = None
        d = self.decision
        if d.method != "none":
            loss = d.loss(logit, member)
            if decision is None and not self.training:  # top-k passes: scored in evaluation only
                decision = d.decide(logit)
            aux, ploss = (loss, None) if d.method == "aux_loss" else (None, loss)
        return RouteInfo(idx, valid, n_routed, member, decision, aux, ploss, quantile)


def topk_positions(r: Tensor, k: int) -> Tensor:
    """Expert-choice: the k highest-scoring positions of each row (B, T), sorted by position."""
    idx = torch.topk(r, k, dim=1, sorted=False).indices  # (B, k) in score order
    return torch.sort(idx, dim=1).values  # position order keeps the routed tokens causal


def membership(idx: Tensor, like: Tensor) -> Tensor:
    """(B, T) float 1.0 where a row's position is in its top-k set; row by row (dim 1)."""
    return torch.zeros_like(like, dtype=torch.float32).scatter_(1, idx, 1.0)


def stream_seed(seed: int, stream: str) -> int:
    """A seed for a named random stream of a run (numpy SeedSequence of the seed and the name).

    32 bits: torch's CPU generator keeps only the low 32 bits of any seed it is given.
    """
    import numpy as np

    words = [seed % 2**64, *stream.encode()]  # entropy words: the name keeps streams apart
    return int(np.random.SeedSequence(words).generate_state(1, np.uint32)[0])


def flat_index(idx: Tensor, T: int) -> Tensor:
    """Row indices (B*k,) into x viewed as (B*T, d): position + row offset b*T."""
    offsets = torch.arange(idx.size(0), device=idx.device).unsqueeze(1) * T  # (B, 1)
    return (idx + offsets).reshape(-1)


def padded_causal_mask(ps: Tensor, valid: Tensor) -> Tensor:
    """(B, 1, k, k) bool: key valid and not after the query's original position.

    Each slot also sees itself, so a padding query never has an empty row (NaN-free); valid
    queries are unaffected, since a padding key is never visible to them.
    """
    causal = ps.unsqueeze(2) >= ps.unsqueeze(1)  # (B, k, k): query pos >= key pos
    eye = torch.eye(ps.size(1), dtype=torch.bool, device=ps.device)
    return ((causal & valid.unsqueeze(1)) | eye).unsqueeze(1)


def route_losses(infos: list[RouteInfo]) -> tuple[Tensor | None, Tensor | None]:
    """Mean aux BCE and mean predictor BCE over the routed layers (None when absent)."""
    aux = [i.aux_loss for i in infos if i.aux_loss is not None]
    pred = [i.predictor_loss for i in infos if i.predictor_loss is not None]
    mean = lambda xs: torch.stack(xs).mean() if xs else None  # noqa: E731
    return mean(aux), mean(pred)


def route_stats(infos: list[RouteInfo], n_tokens: int, device) -> dict[str, Tensor]:
    """Detached tensors (no .item()): routed per layer, tokens, the decision's confusion, per
    sequence (`*_seq`, (R, B)) its correct and positive decisions, and per position
    (`decided_pos`, (R, T)) the positive decisions over the batch."""
    stats = {"routed": torch.stack([i.n_routed for i in infos]).detach(),
             "tokens": torch.full((), n_tokens, dtype=torch.long, device=device)}
    if infos[0].decision is None:
        return stats
    # One joint reduction per layer; fp, fn, tn follow from the totals (fewer small ops).
    tp = torch.stack([(i.decision & (i.member > 0)).sum() for i in infos])  # (n_routed,)
    decided = torch.stack([i.decision.sum() for i in infos])
    members = torch.stack([i.member.sum() for i in infos]).long()
    fp, fn = decided - tp, members - tp
    stats.update(pred_tp=tp, pred_fp=fp, pred_fn=fn, pred_tn=n_tokens - tp - fp - fn)
    # per sequence (R, B): the units of the evaluation's intervals (a sequence's tokens route
    # alike, so its tokens are not independent draws)
    stats["pred_correct_seq"] = torch.stack([(i.decision == (i.member > 0)).sum(-1) for i in infos])
    stats["decided_seq"] = torch.stack([i.decision.sum(-1) for i in infos])
    # per position (R, T), summed over the batch: where in the sequence decisions route
    stats["decided_pos"] = torch.stack([i.decision.sum(0) for i in infos])
    return stats
