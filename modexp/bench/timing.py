"""Timing side by side in one process: interleaved repeats, medians, quartiles of ratios.

Shared by `modexp bench` and the scripts in benchmarks/: on a machine whose load comes and
goes, only A and B timed in turn, compared run by run, give a ratio to trust.
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Callable

import torch


def sync(device: torch.device | str) -> None:
    """Wait for queued GPU work, so wall time covers it."""
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def time_interleaved(fns: dict[str, Callable[[], float]], warmup: int,
                     repeats: int) -> dict[str, list[float]]:
    """Each fn returns its own timing; warm each up, then run them in turn `repeats` times."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    out = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            out[name].append(fn())
    return out


class Stepper:
    """One model with the trainer's optimiser and a fixed batch; step() times one training step."""

    def __init__(self, net: torch.nn.Module, train_cfg, batch: tuple[torch.Tensor, torch.Tensor],
                 device: str, bf16: bool = False, compile: bool = False):
        from modexp.training.optim import make_optimizers  # the trainer's, as trained

        self.net = net.to(device).train()
        self.opts = make_optimizers(self.net, train_cfg, torch.device(device))
        self.fwd = torch.compile(self.net) if compile else self.net
        self.idx, self.targets = (t.to(device) for t in batch)
        self.device, self.bf16 = device, bf16

    def step(self) -> float:
        """Seconds for forward + backward + AdamW step (synchronised on CUDA)."""
        sync(self.device)
        t0 = time.perf_counter()
        with torch.autocast(self.device.split(":")[0], torch.bfloat16, enabled=self.bf16):
            out = self.fwd(self.idx, self.targets)
        out.loss.backward()
        for opt in self.opts:
            opt.step()
            opt.zero_grad(set_to_none=True)
        sync(self.device)
        return time.perf_counter() - t0


def random_batch(vocab: int, B: int, T: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and next-token targets (B, T) of seeded random tokens."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, vocab, (B, T + 1), generator=g)
    return tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()


def quartiles(xs: list[float]) -> tuple[float, float]:
    """First and third quartile (the spread a noisy shared machine puts on a median)."""
    if len(xs) < 2:
        return (xs[0], xs[0]) if xs else (math.nan, math.nan)
    q = statistics.quantiles(xs, n=4)
    return q[0], q[2]
