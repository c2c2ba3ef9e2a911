"""Peak memory of a workload: CUDA's allocator peak, or torch's own CPU allocations (profiler)."""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Callable

import torch

from modexp.bench.report import Memory
from modexp.bench.timing import Stepper
from modexp.runs.sample import BASE, ROUTED, Pair


@contextmanager
def _quiet_stderr():
    """The profiler prints start/stop lines on the C++ stderr; keep the report clean."""
    saved = os.dup(2)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_bytes(fn: Callable[[], object], device: str, resident: int) -> tuple[int, str]:
    """Peak bytes while fn runs: resident (already allocated) + the transient peak above it."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated(), "CUDA max_memory_allocated"
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]")
    live = peak = 0
    for _, n in events:  # allocations (+) and frees (-) in time order
        live += n
        peak = max(peak, live)
    return resident + peak, "CPU: params (+ optimiser state) + torch's peak allocations (profiler)"


def _state_bytes(net, *opts) -> int:
    """Bytes of parameters and buffers (and optimisers' state) held before a workload starts."""
    tensors = list(net.parameters()) + list(net.buffers())
    for opt in opts:
        tensors += [t for s in opt.state.values() for t in s.values() if torch.is_tensor(t)]
    return sum(t.numel() * t.element_size() for t in tensors)


def bench_memory(pair: Pair, prompt: torch.Tensor, new_tokens: int, device: str,
                 steppers: dict[str, Stepper] | None) -> list[Memory]:
    """Peak memory of one batch-1 generation and (with steppers) of one training step."""
    from modexp.models.decode import generate

    kinds, gens = (BASE, ROUTED), {}
    run = {k: lambda k=k: gens.setdefault(k, generate(pair.nets[k], prompt, new_tokens, 1.0))
           for k in kinds}  # keep each generation: its caches are measured below
    peaks = {k: peak_bytes(run[k], device, _state_bytes(pair.nets[k])) for k in kinds}
    cache = {k: sum(c.nbytes for c in gens[k].caches) for k in kinds}
    out = [Memory(f"decode b{prompt.size(0)}", peaks[BASE][0], peaks[ROUTED][0],
                  peaks[ROUTED][1]),
           Memory("  of which KV cache", cache[BASE], cache[ROUTED], "cache buffers, exact")]
    if steppers:
        peaks = {k: peak_bytes(s.step, device, _state_bytes(s.net, *s.opts))
                 for k, s in steppers.items()}
        out.append(Memory("train step", peaks[BASE][0], peaks[ROUTED][0], peaks[ROUTED][1]))
    return out
