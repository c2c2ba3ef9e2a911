"""The machine's matmul peak: a @ b in fp32 (CPU) or bf16 (CUDA), measured and cached.

MFU on a CPU needs a peak, and a datasheet number means little on a shared or throttled
machine; so the peak is what a plain matmul reaches here, best of several runs, cached in
~/.cache/modexp/peak.json per machine (CPU model, threads, torch version) so every run's MFU
uses the same denominator. `modexp bench` measures and caches it; runs read the cache.
"""

from __future__ import annotations

import platform
import time
from pathlib import Path

import torch

from modexp.cache import cache_dir, read_cache, write_cache
from modexp.training import mfu


PEAK_FILE = "peak.json"


def cache_path() -> Path:
    """The peak cache file: modexp.cache's folder / peak.json."""
    return cache_dir() / PEAK_FILE


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), else platform.processor()."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_key(device: str = "cpu", threads: int | None = None) -> str:
    """What a cached peak is valid for: device model, threads (CPU) and torch version."""
    if device.startswith("cuda"):
        return f"cuda|{torch.cuda.get_device_name()}|torch {torch.__version__}"
    return f"cpu|{cpu_model()}|{threads or torch.get_num_threads()} threads|torch {torch.__version__}"


def measure_matmul_peak(m: int = 1024, k: int = 1024, n: int = 1024, device: str = "cpu",
                        repeats: int = 10) -> float:
    """Best FLOP/s of (m, k) @ (k, n) over repeats (fp32 on CPU, bf16 on CUDA); warm-up first."""
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    g = torch.Generator().manual_seed(0)
    a = torch.randn(m, k, generator=g).to(device, dtype)
    b = torch.randn(k, n, generator=g).to(device, dtype)
    inner = max(1, int(2e9 // (2 * m * k * n)))  # ~2 GFLOP per timing: long enough to time, short enough to repeat
    best = 0.0
    for i in range(repeats + 2):
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(inner):
            a @ b
        _sync(device)
        if i >= 2:
            best = max(best, mfu.flops_per_s(2 * m * k * n * inner, time.perf_counter() - t0))
    return best


def read_cached_peak(key: str) -> float | None:
    """The cached peak FLOP/s for this machine key, or None."""
    try:
        return float(read_cache(PEAK_FILE)[key]["flops_per_s"])
    except (ValueError, KeyError, TypeError):
        return None


def cached_peak(device: str = "cpu", measure: bool = True) -> float | None:
    """This machine's matmul peak: from the cache, else measured (and cached) if measure."""
    key = machine_key(device)
    peak = read_cached_peak(key)
    if peak is None and measure:
        peak = measure_matmul_peak(device=device)
        write_cached_peak(key, peak)
    return peak


def write_cached_peak(key: str, peak: float) -> None:
    """Add or replace this key's peak in the cache file (atomically)."""
    data = read_cache(PEAK_FILE)
    data[key] = {"flops_per_s": peak, "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                 "how": "best of 10: (1024, 1024) @ (1024, 1024)"}
    write_cache(PEAK_FILE, data, indent=2)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
