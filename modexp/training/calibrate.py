"""Decision thresholds at capacity: calibrate each routed layer on causal-pass logits.

With 12.5% positives a BCE classifier at logit > 0 under-routes (it is rewarded for saying
"skip"), so the causal pass would run below capacity and its loss and speed describe another
model (../shared/design/mixture-of-depths.md, "The threshold"). Each routed layer's threshold
buffer is set to the (1 - k/T) quantile of its decision logits on training tokens, measured on
the causal pass itself: a layer's inputs there depend on how the earlier layers routed by their
own decisions, so the layers are calibrated in order within one pass. Buffers only: no
gradient, no optimiser, no random draw, so the LM is untouched.
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

