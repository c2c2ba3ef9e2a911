"""Mixture-of-Depths routing (Raposo et al. 2024, arXiv 2404.02258) around an ordinary Block.

A routed layer l with capacity c on a sequence of T tokens:
1. router logit r_i = w_l . x_i (its own `Linear(d, 1)`, no bias: flops.py counts d params);
2. expert-choice top-k over the T positions of each sequence, k = max(1, floor(c*T)), the
   chosen indices SORTED by position (sort of the indices, not argsort of the scores), so the
   gathered tokens stay in causal order and `is_causal=True` masks them by original position;
3. a real gather of the k tokens x~, which run the whole block (attention among themselves
   only, RoPE at their original positions, MLP): the block's cost really falls to k tokens;
4. x_i + g(r_i) * f_i scattered back out of place for routed tokens, every other token passed
   through bit-identical. g is the identity (paper) or a sigmoid (bounded; our default).

Top-k is not causal: whether token i is routed depends on later tokens' scores. For sampling
(sec. 3.5) each routed layer learns a per-token decision: `aux_loss` (BCE of the router logit
against top-k membership, added to the LM loss) or `predictor` (a small MLP on stop-gradient
inputs, trained with its own BCE). routing="causal" routes token i iff that logit passes a
threshold: the layer's `threshold` buffer, 0 (`threshold: zero`) or calibrated
(modexp/training/calibrate.py) so that the causal routed fraction equals the layer's capacity
(a running mean of each training batch's (1 - k/T) quantile of the decision logits), or per
position, that buffer blended with the top-k threshold of the sequence's own prefix
(`threshold: prefix`, modexp/models/decision.py). A plain BCE classifier on 12.5% positives
is rewarded for saying "skip", so at logit > 0 it under-routes.

The router and predictor draw their initial weights from generators of their own (seeded from
the run seed), never from the global stream: the LM's weights are the same whatever the
predictor's settings, and a MoD model's shared weights are those of the vanilla model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import skip_init

from modexp.flops import routed_k
from modexp.models.decision import prefix_thresholds
from modexp.spec import ModVariant

if TYPE_CHECKING:  # model.py imports this module; the Block is only passed in
    from modexp.models.model import Block
    from modexp.models.decode import KVCache


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


class RoutedLayer(nn.Module):
    """One routed layer's router (and predictor); runs a given Block on its top-k tokens."""

    def __init__(self, d_model: int, variant: ModVariant, capacity: float, layer: int = 0):
        super().__init__()
        self.capacity, self.gate, self.causal = capacity, variant.gate, variant.causal
        self.random = RandomRouting(layer) if variant.router == "random" else None
        if self.random is not None:  # the control: no router, no predictor, gate 1
            self.router = self.predictor = None
            return
        # skip_init: no draw from the global RNG here; init_weights fills them from own streams
        self.router = skip_init(nn.Linear, d_model, 1, bias=False)  # own router per layer
        self.predictor = None
        if variant.causal == "predictor":  # d -> h -> 1 with biases, as flops.py counts it
            h = variant.predictor_hidden
            self.predictor = nn.Sequential(skip_init(nn.Linear, d_model, h), nn.GELU(),
                                           skip_init(nn.Linear, h, 1))
        # Route iff decision logit > threshold: a buffer, so checkpoints and decoding carry it;
        # set by calibrate.py (never by a gradient), or kept at 0 for `threshold: zero`.
        self.register_buffer("threshold", torch.zeros(()))
        self.register_buffer("threshold_steps", torch.zeros((), dtype=torch.long))  # folded so far
        self.track = variant.threshold != "zero" and variant.causal != "none"
        # threshold: prefix (decision.py): per-position thresholds from the sequence's prefix
        self.prefix_prior = variant.prefix_prior if variant.threshold == "prefix" else None
        self.seen: list[Tensor] | None = None  # calibrate.py (the trainer): this step's quantiles
        self.calibrating: list[tuple[Tensor, float]] | None = None  # calibrate.py: (logits, k/T)

    @torch.no_grad()
    def init_weights(self, router_gen: torch.Generator, predictor_gen: torch.Generator) -> None:
        """N(0, 0.02) weights (GPT-2), zero biases, each from its own generator."""
        if self.router is None:  # random routing: nothing learned to initialise
            return
        nn.init.normal_(self.router.weight, 0.0, 0.02, generator=router_gen)
        if self.predictor is not None:
            for lin in (self.predictor[0], self.predictor[2]):
                nn.init.normal_(lin.weight, 0.0, 0.02, generator=predictor_gen)
                nn.init.zeros_(lin.bias)

    def forward(self, x: Tensor, block: Block, pos: Tensor, routing: str = "topk",
                cache: KVCache | None = None) -> tuple[Tensor, RouteInfo]:
        """x (B, T, d) -> (x with the routed tokens updated, RouteInfo).

        cache (causal routing only): receives the keys and values of the routed tokens alone.
        """
        if self.random is not None:
            return self._forward_random(x, block, pos, routing, cache)
        r = self._router_logits(x)  # (B, T)
        k = routed_k(self.capacity, x.size(1))
        if routing == "topk" and cache is not None:
            raise ValueError("a KV cache needs routing='causal': top-k routing is not causal")
        if routing == "topk":
            idx = topk_positions(r, k)  # (B, k)
            out = self._run_topk(x, block, pos, r, idx)
            member = membership(idx, r) if self.causal != "none" else None
            n_routed = torch.full((), idx.numel(), dtype=torch.long, device=x.device)
            pred = self._predictor_logits(x)
            if self.training and self.seen is not None:  # this batch's capacity quantile
                self.seen.append(quantile_threshold((r if pred is None else pred).detach().float(), k / x.size(1)))
            return out, self._info(x, r, member, idx, None, n_routed, pred)
        if routing != "causal":
            raise ValueError(f"routing must be 'topk' or 'causal', got {routing!r}")
        if self.causal == "none":
            raise ValueError("routing='causal' needs a causal method; this MoD variant has "
                             "causal: none (use causal: aux_loss or predictor)")
        pred = self._predictor_logits(x)
        logit = r if pred is None else pred
        if cache is not None:  # the prompt's logits: where a prefix decision resumes decoding
            cache.decision_logits = logit.detach().float()
        decision = self._decide(logit, k / x.size(1))  # (B, T)
        out, idx, valid = self._run_causal(x, block, pos, r, decision, cache)
        member = membership(topk_positions(r, k), r)  # what top-k would have done, for stats
        return out, self._info(x, r, member, idx, valid, decision.sum(), pred, decision)

    def _decide(self, logit: Tensor, frac: float) -> Tensor:
        """Route iff logit > threshold; while calibrating, at this batch's (1 - frac) quantile."""
        if self.calibrating is not None:  # calibrate.py pools the logits afterwards
            logit = logit.detach().float()
            self.calibrating.append((logit, frac))
            return logit > quantile_threshold(logit, frac)
        return logit > self.thresholds(logit)

    def thresholds(self, logit: Tensor) -> Tensor:
        """The decision thresholds for logits (B, T) of whole sequences: the calibrated (or
        zero) buffer, or with `threshold: prefix` one per position from the prefix."""
        if self.prefix_prior is None:
            return self.threshold
        return prefix_thresholds(logit.detach(), self.capacity, self.threshold, self.prefix_prior)

    def _run_topk(self, x: Tensor, block: Block, pos: Tensor, r: Tensor, idx: Tensor) -> Tensor:
        """Gather the k tokens of each row, run the block on them, add g(r) * f back."""
        B, T, d = x.shape
        flat = flat_index(idx, T)  # (B*k,) rows of x viewed as (B*T, d)
        xs = gather_rows(x.reshape(B * T, d), flat).view(B, -1, d)  # (B, k, d)
        f = block.update(xs, pos.expand(B, T).gather(1, idx))  # (B, k, d), original positions
        upd = self.gated(r.gather(1, idx), f).to(x.dtype)
        # Out of place: every row not in `flat` is copied from x unchanged (bit-identical).
        return x.reshape(B * T, d).index_add(0, flat, upd.reshape(-1, d)).view(B, T, d)

    def _run_causal(self, x: Tensor, block: Block, pos: Tensor, r: Tensor, decision: Tensor,
                    cache: KVCache | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Route each token on its own decision; rows padded to the largest routed count."""
        B, T, d = x.shape
        counts = decision.sum(1)  # (B,)
        kmax = int(counts.max())  # host sync: shapes depend on data (eval / sampling only)
        pos = pos.expand(B, T)
        # Routed tokens first, each group by position: the first counts[b] slots are row b's.
        idx = torch.where(decision, pos, pos + T).sort(dim=1).indices[:, :kmax]  # (B, kmax)
        valid = torch.arange(kmax, device=x.device) < counts.unsqueeze(1)  # (B, kmax)
        if kmax == 0:
            return x, idx, valid
        flat = flat_index(idx, T)
        xs = x.reshape(B * T, d).index_select(0, flat).view(B, kmax, d)
        ps = pos.gather(1, idx)  # (B, kmax) original positions
        f = block.update(xs, ps, padded_causal_mask(ps, valid), cache)
        if cache is not None:  # padding slots were written too, but only routed tokens count
            cache.keep(counts.tolist())
        new = xs + self.gated(r.gather(1, idx), f).to(x.dtype)
        new = torch.where(valid.unsqueeze(-1), new, xs)  # padding slots write back x itself
        return x.reshape(B * T, d).index_copy(0, flat, new.reshape(-1, d)).view(B, T, d), idx, valid

    def _forward_random(self, x: Tensor, block: Block, pos: Tensor, routing: str,
                        cache: KVCache | None) -> tuple[Tensor, RouteInfo]:
        """The stochastic-routing control: top-k of uniform scores (topk), or each token with
        probability `capacity` (causal); the update is x + f (gate 1: no router to weigh it)."""
        B, T, _ = x.shape
        u = self.random.uniform(B, T, self.training).to(x.device)  # (B, T) in [0, 1)
        ones = torch.ones_like(u)  # the "router logits" the gate ignores
        if routing == "topk":
            if cache is not None:
                raise ValueError("a KV cache needs routing='causal': top-k routing is not causal")
            idx = topk_positions(u, routed_k(self.capacity, T))  # (B, k) uniform, sorted
            n = torch.full((), idx.numel(), dtype=torch.long, device=x.device)
            return self._run_topk(x, block, pos, ones, idx), RouteInfo(idx, None, n, None, None, None, None)
        if routing != "causal":
            raise ValueError(f"routing must be 'topk' or 'causal', got {routing!r}")
        decision = u < self.capacity  # (B, T): Bernoulli(capacity), the causal analogue
        out, idx, valid = self._run_causal(x, block, pos, ones, decision, cache)
        return out, RouteInfo(idx, valid, decision.sum(), None, None, None, None)

    # ------------------------------------------------------------ decoding (modexp/models/decode.py)
    def step_update(self, x: Tensor, block: Block, angles, cache: KVCache) -> Tensor:
        """g(r) * f (n, 1, d) for decode tokens x (n, 1, d) that route here, via the cache."""
        f = block.update(x, angles, None, cache)  # attends over this layer's cached routed tokens
        r = F.linear(x, self.router.weight).squeeze(-1)  # (n, 1) router logits (decode: fp32)
        return self.gated(r, f).to(x.dtype)

    def step_one(self, x: Tensor, block: Block, angles, cache: KVCache, r: float) -> Tensor:
        """Batch-1 decode: x + g(r) * f for one routed token x (1, 1, d), the gate on the host.

        r: the token's router logit, from the decision (decision.decider), a float. g(r) as a
        Python float folds into the residual add: one op where step_update takes a linear, a
        sigmoid, a mul and an add (the same value up to float rounding).
        """
        f = block.update(x, angles, None, cache)  # (1, 1, d)
        g = 0.5 * (1.0 + math.tanh(0.5 * r)) if self.gate == "sigmoid" else r  # sigmoid(r)
        return torch.add(x, f, alpha=g)

    def _router_logits(self, x: Tensor) -> Tensor:
        """Router logits (B, T) in fp32 even under autocast: bf16 would tie scores at top-k."""
        with torch.autocast(x.device.type, enabled=False):
            return self.router(at_least_fp32(x)).squeeze(-1)

    def gated(self, r: Tensor, f: Tensor) -> Tensor:
        """g(r) * f for r (B, k), f (B, k, d): the router weight on the gradient path."""
        if self.random is not None:  # random routing: gate 1 (no router to put on the path)
            return f
        g = torch.sigmoid(r) if self.gate == "sigmoid" else r
        return g.unsqueeze(-1) * f

    def _predictor_logits(self, x: Tensor) -> Tensor | None:
        """Predictor logits (B, T) on stop-gradient x (it must not shape the trunk), or None.

        fp32 even under autocast, as the router: bf16 logits tie, and a calibrated threshold
        among ties would route a fraction far from the capacity.
        """
        if self.predictor is None:
            return None
        with torch.autocast(x.device.type, enabled=False):
            return self.predictor(at_least_fp32(x.detach())).squeeze(-1)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """Checkpoints from before the threshold buffer existed load with threshold 0."""
        if self.random is None:  # random routing has no decision, hence no threshold
            state_dict.setdefault(prefix + "threshold", torch.zeros(()))
            state_dict.setdefault(prefix + "threshold_steps", torch.zeros((), dtype=torch.long))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _info(self, x: Tensor, r: Tensor, member: Tensor | None, idx: Tensor,
              valid: Tensor | None, n_routed: Tensor, pred: Tensor | None = None,
              decision: Tensor | None = None) -> RouteInfo:
        """Losses of the causal method against top-k membership, and the decision for stats."""
        aux = ploss = None
        # The decision on top-k passes is only scored (evaluation): training skips it
        score = decision is None and not self.training
        if self.causal == "aux_loss":
            aux = F.binary_cross_entropy_with_logits(r.float(), member)
            decision = r > self.thresholds(r) if score else decision
        elif self.causal == "predictor":
            pred = self._predictor_logits(x) if pred is None else pred
            ploss = F.binary_cross_entropy_with_logits(pred.float(), member)
            decision = pred > self.thresholds(pred) if score else decision
        return RouteInfo(idx, valid, n_routed, member, decision, aux, ploss)


class RandomRouting(nn.Module):
    """Reproducible draws for random routing, apart from the global torch RNG stream.

    Each training forward draws from a generator seeded by (run seed, layer, forward count);
    the count is a buffer, so a checkpoint carries it and a resumed run draws what an
    uninterrupted one would. Evaluation (eval mode) draws from a fixed seed per layer, so
    every evaluation of a run scores the same routing. The run seed is the one torch was
    seeded with when the model was built (runner: torch.manual_seed(run.seed)).
    """

    def __init__(self, layer: int):
        super().__init__()
        self.layer = layer
        self.register_buffer("state", torch.tensor([torch.initial_seed() % 2**31, 0]))  # seed, count

    def uniform(self, B: int, T: int, training: bool) -> Tensor:
        """(B, T) uniform [0, 1) scores on the CPU (bit-identical on every device)."""
        seed, count = (int(v) for v in self.state)
        if training:
            self.state[1] += 1
        else:
            count = -1  # evaluation: the same draw every time
        g = torch.Generator().manual_seed(((seed * 1_000_003 + self.layer) * 1_000_003 + count) % 2**63)
        return torch.rand(B, T, generator=g)


def topk_positions(r: Tensor, k: int) -> Tensor:
    """Expert-choice: the k highest-scoring positions of each row (B, T), sorted by position."""
    idx = torch.topk(r, k, dim=1, sorted=False).indices  # (B, k) in score order
    return torch.sort(idx, dim=1).values  # position order keeps the routed tokens causal


def at_least_fp32(x: Tensor) -> Tensor:
    """x in float32, or as it is when wider (a float64 model's router runs in float64)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


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


def quantile_threshold(logit: Tensor, frac: float) -> Tensor:
    """Scalar t with round(frac * n) of the n logits above it: the midpoint of the two order
    statistics around that count (ties aside), so `logit > t` routes the fraction frac."""
    flat = logit.flatten()
    n = min(max(round(frac * flat.numel()), 0), flat.numel())
    top = flat.topk(min(n + 1, flat.numel())).values  # descending
    if n == 0:
        return top[0] + 1.0  # nothing routes
    if n == flat.numel():
        return top[-1] - 1.0  # everything routes
    return (top[n - 1] + top[n]) / 2


class _GatherRows(torch.autograd.Function):
    """x.index_select(0, rows) for DISTINCT rows; backward writes the grads into zeros.

    index_select's backward accumulates (index_add, via scatter_add on the CPU: single-threaded
    and ~10x slower than a copy); top-k rows are distinct, so an index_copy does the same.
    """

    @staticmethod
    def forward(ctx, x: Tensor, rows: Tensor) -> Tensor:
        ctx.save_for_backward(rows)
        ctx.shape = x.shape
        return x.index_select(0, rows)

    @staticmethod
    def backward(ctx, g: Tensor):
        (rows,) = ctx.saved_tensors
        return g.new_zeros(ctx.shape).index_copy_(0, rows, g), None


def gather_rows(x: Tensor, rows: Tensor) -> Tensor:
    """Rows `rows` (n,) of x (N, d), all distinct: (n, d)."""
    return _GatherRows.apply(x, rows) if x.requires_grad else x.index_select(0, rows)


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
    """Detached tensors (no .item()): routed per layer, tokens, the decision's confusion, and
    per sequence (`*_seq`, (R, B)) its correct and positive decisions."""
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
    return stats
