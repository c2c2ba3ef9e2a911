"""Decision thresholds at capacity: each routed layer's threshold routes the capacity fraction.

With 12.5% positives a BCE classifier at logit > 0 under-routes (it is rewarded for saying
"skip"), so the causal pass would run below capacity and its loss and speed describe another
model (Raposo et al. 2024, sec. 3.5; modexp/models/decision.py).

Two estimates of one quantity, the (1 - k/T) quantile of a layer's decision logits on
training tokens:
- during training (`fold_thresholds`), free: each training batch's quantile (the forward pass
  returns it, ForwardOutput.quantiles) enters a running average (the plain mean of the first
  WINDOW steps, then an exponential moving average of weight 1/WINDOW), so
  every evaluation and checkpoint has a current threshold. It lags a predictor that is still
  learning, and a mean of per-batch quantiles is not the quantile of the pooled tokens;
- at the run's last evaluation (`calibrate_thresholds`, called by the trainer), exact: causal
  passes over the last CALIBRATION_STEPS training batches with the final weights, layer by
  layer (a layer's inputs there depend on how the earlier layers routed by their own
  decisions), the quantile of the pooled logits. This is the threshold the summary, the
  verdict's causal fit, `sample` and `bench` use.
One batch alone does not do: a sequence's tokens route alike, so the quantile of one batch
moves by several points of routed fraction from batch to batch.
Thresholds are written back through Decision.set_threshold only: no gradient, no optimiser,
no random draw, so the LM is untouched.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Callable, Iterable

import torch
from torch import Tensor

CALIBRATION_STEPS = 8
"""Training batches the final calibration pools: 8 x 32 sequences pin the quantile to about
half a point of routed fraction, for 8 forward passes once per run."""

WINDOW = 32
"""Steps in the running threshold's mean: 32 batches of e.g. 32 sequences (1024 sequences)
hold it within about a point; longer would lag the predictor more as it learns."""


@torch.no_grad()
def calibrate_thresholds(model, batches: Iterable[Tensor], autocast=None) -> list[float]:
    """Every routed layer's threshold from causal passes over batches of tokens (B, T); set
    on the model and returned, one per routed layer with a learned decision.

    Within a batch each layer routes at its own logits' quantile (routing="calibrate"), so the
    next layer sees inputs routed at capacity; the threshold is the quantile of the logits
    pooled over every batch.
    """
    decisions = model.decisions()
    if not decisions:
        return []
    was_training = model.training
    model.eval()
    pooled: list[list[Tensor]] = [[] for _ in decisions]
    try:
        for idx in batches:
            with autocast() if autocast is not None else nullcontext():
                out = model(idx, routing="calibrate")
            for seen, logit in zip(pooled, out.decision_logits):
                seen.append(logit.detach().float())
    finally:
        model.train(was_training)
    for d, seen in zip(decisions, pooled):
        if seen:
            d.set_threshold(d.quantile(torch.cat(seen)))
    return [float(d.threshold) for d in decisions]


def calibrate_on_training(model, data, seed: int, step: int, batch: tuple[int, int], device,
                          autocast=None) -> list[float]:
    """calibrate_thresholds over the training batches of the CALIBRATION_STEPS steps before
    `step`, in micro-batches (batch = (batch_size, micro)): training tokens, a pure function of
    (seed, step), the same on every rank. Only decisions with a calibrated threshold
    (`calibrated`, or `prefix`'s prior; Decision.tracks) have one to set; returns the
    thresholds ([] if none)."""
    if not model.tracked():
        return []
    B, m = batch
    batches = (data.train_batch(seed, s, B, slice(i, i + m))[0].to(device)
               for s in range(max(0, step - CALIBRATION_STEPS), step) for i in range(0, B, m))
    return calibrate_thresholds(model, batches, autocast)


@torch.no_grad()
def fold_thresholds(model, quantiles: list[Tensor],
                    all_reduce: Callable[[Tensor], Tensor] | None = None) -> None:
    """Fold one step's batch quantiles into the thresholds of the layers that track them.

    quantiles: ForwardOutput.quantiles of each micro-batch of the step, (R,) each in the
    order of model.tracked(). Their mean over the micro-batches (and over DDP ranks through
    `all_reduce`, a callable averaging a tensor over them, so every rank keeps the same
    threshold) enters a running average with weight 1/n for the n-th step while n <= WINDOW
    (the plain mean so far), then 1/WINDOW (an exponential moving average).
    """
    decisions = model.tracked()
    if not decisions or not quantiles:
        return
    q = torch.stack([torch.stack([m[j] for m in quantiles]).mean() for j in range(len(decisions))])
    if all_reduce is not None:
        q = all_reduce(q)
    for d, qi in zip(decisions, q):
        n = d.threshold_steps + 1  # a tensor, as the step count: no host sync
        d.set_threshold(d.threshold + (qi - d.threshold) / n.clamp(max=WINDOW), steps=n)
