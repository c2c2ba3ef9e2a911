"""Decision thresholds at capacity: each routed layer's threshold routes the capacity fraction.

With 12.5% positives a BCE classifier at logit > 0 under-routes (it is rewarded for saying
"skip"), so the causal pass would run below capacity and its loss and speed describe another
model (../shared/design/mixture-of-depths.md, "The threshold").

Two estimates of one quantity, the (1 - k/T) quantile of a layer's decision logits on
training tokens:
- during training (`fold_thresholds`), free: each training batch's quantile (mod.py records it
  in the forward pass it runs anyway) enters a running mean over the last WINDOW steps, so
  every evaluation and checkpoint has a current threshold. It lags a predictor that is still
  learning (on cpu-isoflop a lag of ~0.1 in logit moved a held-out fraction by 3 points), and
  a mean of per-batch quantiles is not the quantile of the pooled tokens;
- at the run's last evaluation (`calibrate_thresholds`, called by the trainer), exact: causal
  passes over the last CALIBRATION_STEPS training batches with the final weights, layer by
  layer (a layer's inputs there depend on how the earlier layers routed by their own
  decisions), the quantile of the pooled logits. This is the threshold the summary, the
  verdict's causal fit, `sample` and `bench` use.
One batch alone does not do: a sequence's tokens route alike, so one batch of 32 sequences put
the held-out fraction anywhere in 11-16% for 12.5%.
Buffers only: no gradient, no optimiser, no random draw, so the LM is untouched.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Iterable

import torch
from torch import Tensor


CALIBRATION_STEPS = 8
"""Training batches the final calibration pools: 8 x 32 sequences pin the quantile to about
half a point of routed fraction, for 8 forward passes once per run."""


@torch.no_grad()
def calibrate_thresholds(model, batches: Iterable[Tensor], autocast=None) -> list[float]:
    """Set every routed layer's threshold from causal passes over batches of tokens (B, T).

    Within a batch each layer routes at its own logits' quantile, so the next layer sees
    inputs routed at capacity; the threshold kept is the quantile of the logits pooled over
    every batch. Returns the thresholds, one per routed layer.
    """
    from modexp.models.mod import quantile_threshold

    layers = [r for _, r in model.layers() if r is not None]
    if not layers:
        return []
    was_training = model.training
    model.eval()
    for layer in layers:
        layer.calibrating = []
    try:
        for idx in batches:
            with autocast() if autocast is not None else nullcontext():
                model(idx, routing="causal")
        for layer in layers:
            if layer.calibrating:
                frac = layer.calibrating[0][1]
                pooled = torch.cat([logit.flatten() for logit, _ in layer.calibrating])
                layer.threshold.copy_(quantile_threshold(pooled, frac))
    finally:
        for layer in layers:
            layer.calibrating = None
        model.train(was_training)
    return [float(layer.threshold) for layer in layers]


def calibrate_on_training(model, data, seed: int, step: int, batch: tuple[int, int], device,
                          autocast=None) -> list[float]:
    """calibrate_thresholds over the training batches of the CALIBRATION_STEPS steps before
    `step`, in micro-batches (batch = (batch_size, micro)): training tokens, a pure function of
    (seed, step), the same on every rank. Only layers of a learned router with a calibrated
    threshold (`calibrated`, or `prefix`'s prior; RoutedLayer.track) have one to set; returns
    the thresholds ([] if none)."""
    if not any(getattr(r, "track", False) for _, r in model.layers() if r is not None):
        return []
    B, m = batch
    batches = (data.train_batch(seed, s, B, slice(i, i + m))[0].to(device)
               for s in range(max(0, step - CALIBRATION_STEPS), step) for i in range(0, B, m))
    return calibrate_thresholds(model, batches, autocast)


WINDOW = 32
"""Steps in the running threshold's mean: 32 batches of e.g. 32 sequences (1024 sequences)
hold it within about a point; longer would lag the predictor more as it learns."""


def track_thresholds(model) -> None:
    """Make every layer with a calibrated threshold (`calibrated`, or `prefix`'s prior) record
    its batch quantiles in training mode."""
    for _, r in model.layers():
        if r is not None and getattr(r, "track", False):
            r.seen = []


@torch.no_grad()
def fold_thresholds(model, all_reduce=None) -> None:
    """Fold this step's batch quantiles (RoutedLayer.seen) into each layer's threshold buffer.

    The mean over the step's micro-batches (and over DDP ranks through `all_reduce`, a callable
    averaging a tensor over them, so every rank keeps the same threshold) enters a running
    mean of the last WINDOW steps: 1/n for the n-th step while n <= WINDOW, then 1/WINDOW.
    """
    layers = [r for _, r in model.layers() if r is not None and getattr(r, "seen", None)]
    if not layers:
        return
    q = torch.stack([torch.stack(r.seen).mean() for r in layers])  # (layers,)
    if all_reduce is not None:
        q = all_reduce(q)
    for layer, qi in zip(layers, q):
        n = int(layer.threshold_steps) + 1
        layer.threshold.add_((qi - layer.threshold) / min(n, WINDOW))
        layer.threshold_steps.fill_(n)
        layer.seen.clear()
