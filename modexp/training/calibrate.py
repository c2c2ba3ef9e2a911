"""Decision thresholds at capacity: each routed layer's threshold routes the capacity fraction.

With 12.5% positives a BCE classifier at logit > 0 under-routes (it is rewarded for saying
"skip"), so the causal pass would run below capacity and its loss and speed describe another
model (../shared/design/mixture-of-depths.md, "The threshold").

During training (`fold_thresholds`): every training batch's (1 - k/T) quantile of each routed
layer's decision logits (mod.py records it in the forward pass it already runs) is folded into
the layer's threshold buffer, a running mean over the last WINDOW steps. Why not a pass of its
own at each evaluation: one batch's quantile moves with the few dozen sequences in it (tokens
of a sequence are alike), and on the quickstart one batch put the held-out causal fraction at
11-16% for 12.5%; WINDOW batches cost nothing and hold it within a point. The
first routed layer sees the same inputs in the top-k and causal passes; a later one sees
inputs routed by top-k rather than by decisions, which differ on the few tokens the earlier
decisions get wrong.

`calibrate_thresholds` calibrates on causal passes instead, layer by layer within each pass
(a layer's inputs there depend on how the earlier layers routed by their own decisions): for
models that have not trained through the Trainer, as `modexp bench`'s.
Buffers only: no gradient, no optimiser, no random draw, so the LM is untouched.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Iterable

import torch
from torch import Tensor


@torch.no_grad()
def calibrate_thresholds(model, batches: Iterable[Tensor], autocast=None) -> list[float]:
    """Set every routed layer's threshold from causal passes over batches of tokens (B, T).

    Within a batch each layer takes the quantile of its own logits before deciding, so the
    next layer sees inputs routed at capacity; the threshold kept is the mean over batches.
    Returns the thresholds, one per routed layer.
    """
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
                layer.threshold.copy_(torch.stack(layer.calibrating).mean())
    finally:
        for layer in layers:
            layer.calibrating = None
        model.train(was_training)
    return [float(layer.threshold) for layer in layers]



WINDOW = 32
"""Steps in the threshold's running mean: 32 batches of e.g. 32 sequences (1024 sequences)
pin the quantile within about a point; longer would lag the predictor as it learns."""


def track_thresholds(model) -> None:
    """Make every `threshold: calibrated` layer record its batch quantiles in training mode."""
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
