"""Model FLOP utilisation: achieved FLOP/s against the device's peak (pure functions, no torch).

MFU (Chowdhery et al. 2022, PaLM, App. B) = model FLOPs per second / peak FLOPs per second,
with the model's FLOPs from flops.py (matmul convention: what the hardware's matmul units
do) and the peak either given (--peak-tflops), looked up for known GPUs at the dtype the
trainer runs (bf16 autocast on CUDA), or measured on this machine (a @ b in fp32, cached per
machine by modexp/training/peak.py).
"""

from __future__ import annotations

# Dense (no sparsity) peak TFLOP/s from the vendors' datasheets, by the name CUDA reports.
# Order matters: the first key found in the device name wins ("H100 PCIe" before "H100").
GPU_PEAK_TFLOPS: dict[str, dict[str, float]] = {
    "H200": {"bf16": 989.0, "tf32": 494.0, "fp32": 67.0},
    "H100 PCIe": {"bf16": 756.0, "tf32": 378.0, "fp32": 51.0},
    "H100": {"bf16": 989.0, "tf32": 494.0, "fp32": 67.0},  # SXM
    "A100": {"bf16": 312.0, "tf32": 156.0, "fp32": 19.5},
    "L40S": {"bf16": 362.0, "tf32": 183.0, "fp32": 91.6},
    "L4": {"bf16": 121.0, "tf32": 60.0, "fp32": 30.3},
    "A10": {"bf16": 125.0, "tf32": 62.5, "fp32": 31.2},
    "RTX 4090": {"bf16": 165.2, "tf32": 82.6, "fp32": 82.6},
}


def gpu_peak_flops(device_name: str, dtype: str = "bf16") -> float | None:
    """Peak FLOP/s of a known GPU at dtype (bf16, tf32, fp32), None if it is not in the table."""
    for key, peaks in GPU_PEAK_TFLOPS.items():
        if key.lower() in device_name.lower():
            return peaks[dtype] * 1e12 if dtype in peaks else None
    return None


def flops_per_s(flops: float, seconds: float) -> float:
    """Achieved FLOP/s: FLOPs done over the seconds they took (0 s gives 0, not inf)."""
    return flops / seconds if seconds > 0 else 0.0


def mfu(achieved: float, peak: float | None) -> float | None:
    """achieved / peak, or None where the peak is unknown."""
    return achieved / peak if peak else None


def throughput_fields(flops: float, seconds: float, peak: float | None) -> dict:
    """The `flops_per_s` and `mfu` fields of a train row or a summary."""
    achieved = flops_per_s(flops, seconds)
    return {"flops_per_s": achieved, "mfu": mfu(achieved, peak)}
