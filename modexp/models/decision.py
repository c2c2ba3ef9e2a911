"""The causal decision of a routed layer (Raposo et al. 2024, arXiv 2404.02258, sec. 3.5).

Top-k routing is not causal: whether token i is routed depends on later tokens' router
scores. Sampling one token at a time needs a per-token decision: route token i iff its
decision logit passes a threshold. One `Decision` per routed layer owns all of it, and
prefill, decoding, evaluation and calibration all ask it:
- the decision logit: the router's own logit (causal: aux_loss, trained by a BCE against top-k
  membership added to the LM loss) or a small predictor MLP's on stop-gradient inputs
  (causal: predictor, trained by its own BCE and optimiser, so the LM is untouched);
- the threshold: 0 (`threshold: zero`), or calibrated so the causal routed fraction equals the
  capacity (`calibrated`: a plain BCE classifier on 12.5% positives is rewarded for saying
  "skip", so at logit > 0 it under-routes), or per position (`prefix`, below). The calibrated
  value is a buffer the trainer writes through `set_threshold` (modexp/training/calibrate.py:
  a running mean of each training batch's `quantile`, then an exact pooled quantile at the
  end), so checkpoints and decoding carry it;
- while decoding, each row's prefix so far (`DecisionState`).

`threshold: prefix`. Top-k routes the k = c T highest scores of each sequence, so whether a
token is routed depends on its sequence's own k-th score, which one global threshold can only
guess. A causal decision can estimate that k-th score from the prefix it has seen. At
position i (n = i + 1 tokens so far) the threshold is

    tau_i = (1 - w_n) * theta + w_n * q_i,    w_n = n / (n + prior),

q_i the ceil(c n)-th largest decision logit of the prefix (its top-k at capacity c, the
current token included) and theta the calibrated threshold: a shrinkage estimate that trusts
the prefix as it grows, `prior` tokens' worth of weight on theta. Only the past and the
current token enter, so it is causal, and a decode step computes the same threshold from the
same two functions (`kth_of_prefix` is exact, `blend` elementwise).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import skip_init

from modexp.flops import routed_k
from modexp.spec import ModVariant

ROWS_PER_CHUNK = 256  # prefix positions per (B, rows, T) block: bounded memory at long T

NO_CAUSAL = ("routing='causal' needs a causal method; this MoD variant has causal: none "
             "(use causal: aux_loss or predictor)")


def at_least_fp32(x: Tensor) -> Tensor:
    """x in float32, or as it is when wider (a float64 model's router runs in float64)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


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


# ---------------------------------------------------------------- threshold: prefix
def prefix_counts(frac: float, n: Tensor) -> Tensor:
    """ceil(frac * n), at least 1: how many of n tokens the prefix's top-k keeps (float64)."""
    return torch.ceil(frac * n.double()).long().clamp_min(1)


def prefix_weights(n: Tensor, theta: Tensor | float, prior: int) -> tuple[Tensor, Tensor]:
    """The blend's terms for prefix lengths n, float32: w = n / (n + prior) and (1 - w) theta."""
    w = n.float() / (n + prior).float()
    return w, (1 - w) * torch.as_tensor(theta, dtype=torch.float32, device=n.device)


def prefix_terms(n: Tensor, frac: float, theta: Tensor | float,
                 prior: int) -> tuple[Tensor, Tensor, Tensor]:
    """The per-length terms of the prefix threshold for prefix lengths n: m = ceil(frac n),
    w and (1 - w) theta (what a decode path may table once per generation)."""
    return (prefix_counts(frac, n), *prefix_weights(n, theta, prior))


def blend(q: Tensor, n: Tensor, theta: Tensor | float, prior: int) -> Tensor:
    """tau = (1 - w_n) theta + w_n q for prefix lengths n (broadcast against q), float32."""
    w, a = prefix_weights(n, theta, prior)
    return a + w * q


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
        q[:, a:b] = kth_of_prefix(prefix, m[a:b])
    return blend(q, n, theta, prior)


def kth_of_prefix(prefix: Tensor, m: Tensor) -> Tensor:
    """The m[j]-th largest of prefix[..., j, :] (later positions -inf): (..., rows)."""
    top = prefix.topk(int(m.max()), dim=-1).values  # (..., rows, max m) descending
    at = (m - 1).view(*(1,) * (prefix.dim() - 2), -1, 1).expand(*prefix.shape[:-1], 1)
    return top.gather(-1, at).squeeze(-1)


@dataclass
class DecisionState:
    """One generation's decision state at one routed layer: each row's decision logits so
    far (B, n), the prompt's first (the prefix a `threshold: prefix` decision continues)."""

    seen: Tensor


# ---------------------------------------------------------------- the decision
class Decision(nn.Module):
    """A routed layer's causal decision: its logit (router or predictor), its threshold, and
    the per-row prefix while decoding. See the module docstring."""

    def __init__(self, d_model: int, variant: ModVariant, capacity: float):
        super().__init__()
        self.method, self.capacity = variant.causal, capacity  # causal: aux_loss | predictor | none
        self.predictor = None
        if variant.causal == "predictor":  # d -> h -> 1 with biases, as flops.py counts it
            h = variant.predictor_hidden
            # skip_init: no draw from the global RNG here; init_weights fills them
            self.predictor = nn.Sequential(skip_init(nn.Linear, d_model, h), nn.GELU(),
                                           skip_init(nn.Linear, h, 1))
        # Route iff decision logit > threshold: buffers, so checkpoints and decoding carry them;
        # written by set_threshold (never by a gradient), or kept at 0 for `threshold: zero`
        self.register_buffer("threshold", torch.zeros(()))
        self.register_buffer("threshold_steps", torch.zeros((), dtype=torch.long))  # folded so far
        self.tracks = variant.threshold != "zero" and variant.causal != "none"
        """Whether training calibrates the threshold (`calibrated`, or `prefix`'s theta)."""
        self.prefix_prior = variant.prefix_prior if variant.threshold == "prefix" else None

    @torch.no_grad()
    def init_weights(self, gen: torch.Generator) -> None:
        """The predictor's N(0, 0.02) weights (GPT-2) and zero biases, from its own generator."""
        if self.predictor is not None:
            for lin in (self.predictor[0], self.predictor[2]):
                nn.init.normal_(lin.weight, 0.0, 0.02, generator=gen)
                nn.init.zeros_(lin.bias)

    # ------------------------------------------------------------ the logit and its training
    def logit(self, x: Tensor, r: Tensor) -> Tensor:
        """Decision logits (B, T) of tokens x (B, T, d) whose router logits are r (B, T)."""
        if self.method == "aux_loss":
            return r
        if self.method == "predictor":
            return self.predict(x)
        raise ValueError(NO_CAUSAL)

    def predict(self, x: Tensor) -> Tensor:
        """The predictor's logits (B, T) on stop-gradient x (it must not shape the trunk), in
        fp32 even under autocast: bf16 logits tie, and a calibrated threshold among ties
        would route a fraction far from the capacity."""
        with torch.autocast(x.device.type, enabled=False):
            return self.predictor(at_least_fp32(x.detach())).squeeze(-1)

    def loss(self, logit: Tensor, member: Tensor) -> Tensor:
        """BCE of the decision logits against top-k membership (B, T): the causal method's loss."""
        return F.binary_cross_entropy_with_logits(logit.float(), member)

    def quantile(self, logit: Tensor) -> Tensor:
        """The (1 - k/T) quantile of decision logits (..., T): the threshold at which they
        route the layer's capacity (the calibrated threshold's estimate from them)."""
        T = logit.size(-1)
        return quantile_threshold(logit.detach().float(), routed_k(self.capacity, T) / T)

    # ------------------------------------------------------------ the threshold
    def thresholds(self, logit: Tensor) -> Tensor:
        """The thresholds for decision logits (B, T) of whole sequences: the calibrated (or
        zero) buffer, or with `threshold: prefix` one per position from the prefix."""
        if self.prefix_prior is None:
            return self.threshold
        return prefix_thresholds(logit.detach(), self.capacity, self.threshold, self.prefix_prior)

    def decide(self, logit: Tensor) -> Tensor:
        """(B, T) bool: route iff the decision logit passes its threshold."""
        return logit > self.thresholds(logit)

    @torch.no_grad()
    def set_threshold(self, value: Tensor | float, steps: Tensor | int | None = None) -> None:
        """The one writer of the threshold (calibrate.py), and of how many training steps its
        running mean has folded (steps)."""
        self.threshold.copy_(torch.as_tensor(value))
        if steps is not None:
            self.threshold_steps.fill_(steps)

    def prefix_terms(self, n: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """This layer's prefix-threshold terms m, w, (1 - w) theta for prefix lengths n."""
        return prefix_terms(n, self.capacity, self.threshold, self.prefix_prior)

    def set_prefix_prior(self, prior: int | None) -> None:
        """Decide by `threshold: prefix` with this prior, or (None) by the threshold alone."""
        self.prefix_prior = prior

    # ------------------------------------------------------------ decoding
    def begin(self, logit: Tensor) -> DecisionState:
        """The state a generation starts from: the prompt's decision logits (B, P)."""
        return DecisionState(logit.detach().float())

    def decide_next(self, logit: Tensor, state: DecisionState) -> Tensor:
        """(B,) bool for one new token per row, decision logits (B, 1): the decision the full
        causal forward makes at that position."""
        if self.prefix_prior is None:
            return (logit > self.threshold)[:, 0]
        state.seen = torch.cat((state.seen, logit.detach().float()), dim=1)  # (B, n)
        n = torch.full((1,), state.seen.size(1), device=logit.device)
        q = kth_of_prefix(state.seen.unsqueeze(1), prefix_counts(self.capacity, n))  # (B, 1)
        return (logit > blend(q, n, self.threshold, self.prefix_prior))[:, 0]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """Checkpoints from before the threshold buffer existed load with threshold 0."""
        state_dict.setdefault(prefix + "threshold", torch.zeros(()))
        state_dict.setdefault(prefix + "threshold_steps", torch.zeros((), dtype=torch.long))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
