"""micro_batch_size auto on CUDA: does one training step of n sequences fit this GPU?

The memory estimate (modexp/memory.py) proposes the largest micro-batch it expects to fit;
`step_fits` checks it where the run trains: the run's model, built on the device, one forward
(bf16 autocast, as the Trainer runs) and backward of n random sequences, with AdamW's state
(8 bytes per parameter, memory.training_memory's `optimizer`) held beside it as one reserved
buffer, since the trial takes no optimiser step. torch.OutOfMemoryError means no; the caller
(runs/runner.py resolve_auto) halves n and tries again (memory.halving_search).

Everything the trial allocates is freed before it returns (the cache emptied too). Its
tokens come from their own generator; its weights from the global one, which train_one seeds
with the run's seed after the trial, so the run's weights and data are what they would be
without it.
"""

from __future__ import annotations

import gc

import torch

from modexp.models.build import build_model

ADAMW_STATE_BYTES = 8  # exp_avg and exp_avg_sq, float32, per parameter


def step_fits(model_cfg, variant, vocab: int, seq_len: int, n: int, device: torch.device) -> bool:
    """Whether one forward + backward of `n` sequences of `seq_len` tokens fits `device`
    beside AdamW's state; False on torch.OutOfMemoryError."""
    net = reserve = out = None
    try:
        net = build_model(model_cfg, variant, vocab, seq_len=seq_len, device=device).train()
        params = sum(p.numel() for p in net.parameters())
        reserve = torch.empty(params * ADAMW_STATE_BYTES, dtype=torch.uint8, device=device)
        gen = torch.Generator(device="cpu").manual_seed(0)
        tokens = torch.randint(0, vocab, (n, seq_len + 1), generator=gen).to(device)
        net.set_draws(0, 0)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            out = net(tokens[:, :-1], tokens[:, 1:])
        out.loss.backward()
        return True
    except torch.OutOfMemoryError:
        return False
    finally:
        del net, reserve, out
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
