"""Model FLOP utilisation: achieved FLOP/s against the device's peak (pure functions, no torch).

MFU (Chowdhery et al. 2022, PaLM, App. B) = model FLOPs per second / peak FLOPs per second,
with the model's FLOPs from flops.py (matmul convention: what the hardware's matmul units
do) and the peak either given (--peak-tflops), looked up for known GPUs at the dtype the
trainer runs (bf16 autocast on CUDA), or measured on this machine (a @ b in fp32, cached per
machine by modexp/training/peak.py).
"""

from __future__ import annotations

# Dense (no 2:4 sparsity) peak TFLOP/s of the tensor cores, by the exact name
# torch.cuda.get_device_name reports, from the vendor's datasheet for that product (NVIDIA
# quotes "with sparsity" figures: the dense ones are half). bf16 with fp32 accumulation is
# what the trainer runs (autocast); tf32 is what fp32 matmuls run at with TF32 on.
_H100_SXM = {"bf16": 989.0, "tf32": 494.5}     # H100 SXM5 datasheet: 1,979 / 989 sparse
_H100_PCIE = {"bf16": 756.0, "tf32": 378.0}    # H100 PCIe datasheet: 1,513 / 756 sparse
_H100_NVL = {"bf16": 835.5, "tf32": 417.5}     # H100 NVL datasheet: 1,671 / 835 sparse
_A100 = {"bf16": 312.0, "tf32": 156.0}         # A100 datasheet (SXM4 and PCIe alike)
_B200 = {"bf16": 2250.0, "tf32": 1100.0}       # HGX B200 datasheet, per GPU: 4.5 PF / 2.2 PF sparse
_B100 = {"bf16": 1750.0, "tf32": 875.0}        # HGX B100 datasheet, per GPU: 3.5 PF / 1.75 PF sparse
GPU_PEAK_TFLOPS: dict[str, dict[str, float]] = {
    "NVIDIA H100 80GB HBM3": _H100_SXM,
    "NVIDIA H100": _H100_SXM,  # some drivers report the SXM part without its memory
    "NVIDIA H100 PCIe": _H100_PCIE,
    "NVIDIA H100 NVL": _H100_NVL,
    "NVIDIA H200": _H100_SXM,  # H200 SXM datasheet: the same tensor cores as H100 SXM
    "NVIDIA H200 NVL": _H100_NVL,  # H200 NVL datasheet: 1,671 sparse
    "NVIDIA H800": _H100_SXM,  # H800 SXM5: H100 SXM's compute, less NVLink bandwidth
    "NVIDIA H800 PCIe": _H100_PCIE,
    "NVIDIA GH200 480GB": _H100_SXM,  # GH200 datasheet: 1,979 sparse
    "NVIDIA GH200 144G HBM3e": _H100_SXM,
    "NVIDIA A100-SXM4-80GB": _A100,
    "NVIDIA A100-SXM4-40GB": _A100,
    "NVIDIA A100-PCIE-40GB": _A100,
    "NVIDIA A100 80GB PCIe": _A100,
    "NVIDIA B200": _B200,
    "NVIDIA B100": _B100,
    "NVIDIA L40S": {"bf16": 362.05, "tf32": 183.0},  # L40S datasheet: 733 / 366 sparse
    "NVIDIA L40": {"bf16": 181.05, "tf32": 90.5},    # L40 datasheet: 362.1 / 181 sparse
    "NVIDIA L4": {"bf16": 121.0, "tf32": 60.0},      # L4 datasheet: 242 / 120 sparse
    "NVIDIA A10": {"bf16": 125.0, "tf32": 62.5},     # A10 datasheet: 250 / 125 sparse
    "NVIDIA GeForce RTX 4090": {"bf16": 165.2, "tf32": 82.6},  # Ada whitepaper, fp32 accumulate
}
"""Known GPUs. A name not listed (A10G among them: AWS publishes no tensor-core figure for
it) has no peak, never another product's: pass --peak-tflops for it."""


def gpu_peak_flops(device_name: str, dtype: str = "bf16") -> float | None:
    """Peak FLOP/s of a known GPU at dtype (bf16, tf32), by its exact CUDA name (surrounding
    spaces ignored); None for a name or dtype not in the table (no substring matching: "H100
    NVL" is not an "H100", "L40" not an "L4")."""
    peaks = GPU_PEAK_TFLOPS.get(device_name.strip(), {})
    return peaks[dtype] * 1e12 if dtype in peaks else None


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
