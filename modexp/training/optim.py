"""The optimisers: one AdamW for the language model, one of their own for the causal predictors.

The predictor leaves the LM untouched in every way (Raposo et al. 2024, sec. 3.5):
its gradient already stops at its input; apart from that it has its own optimiser state, its
own learning rate (`predictor_lr`) and its own gradient-norm clip (train.py), so the LM of a
MoD variant trains bit for bit the same whatever the predictor does.
"""

from __future__ import annotations

import torch

from modexp.spec import TrainConfig


def split_params(model: torch.nn.Module) -> tuple[list, list]:
    """(LM parameters, causal predictor parameters): each trained by its own optimiser.

    A modexp model lists its LM parameters itself (Transformer.lm_parameters), in the order
    its checkpoints' optimiser state is indexed by; any other module: parameters() less the
    predictors'."""
    pred = model.predictor_parameters() if hasattr(model, "predictor_parameters") else []
    ids = {id(p) for p in pred}
    lm = model.lm_parameters() if hasattr(model, "lm_parameters") else model.parameters()
    return [p for p in lm if p.requires_grad and id(p) not in ids], pred


def _adamw(params: list, cfg: TrainConfig, lr: float, device: torch.device) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not norms, biases)."""
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    # fused: one kernel over all parameters, where the default loops over them one by one
    # (on the CPU the loop was a large share of a step: docs/performance.md)
    fused = device.type in ("cuda", "cpu")
    return torch.optim.AdamW(groups, lr=lr, betas=(cfg.beta1, cfg.beta2), fused=fused)


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """The LM's AdamW: every parameter but the causal predictors' (make_predictor_optimizer)."""
    return _adamw(split_params(model)[0], cfg, cfg.lr, device)


def make_predictor_optimizer(model: torch.nn.Module, cfg: TrainConfig,
                             device: torch.device) -> torch.optim.AdamW | None:
    """The predictors' own AdamW at the variant's predictor_lr (default train.lr), or None.

    Apart from the LM's so that nothing is shared (MoD paper sec. 3.5: the predictor leaves
    the LM untouched): no optimiser state, no learning rate, no gradient-norm clip.
    """
    pred = split_params(model)[1]
    if not pred:
        return None
    lr = getattr(getattr(model, "variant", None), "predictor_lr", None) or cfg.lr
    return _adamw(pred, cfg, lr, device)


def make_optimizers(model: torch.nn.Module, cfg: TrainConfig,
                    device: torch.device) -> list[torch.optim.AdamW]:
    """Every optimiser a training step steps: the LM's, then the predictors' own if any."""
    pred = make_predictor_optimizer(model, cfg, device)
    return [make_optimizer(model, cfg, device)] + ([pred] if pred is not None else [])
