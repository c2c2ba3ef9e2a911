"""--device: checked before anything is written, so a missing GPU is an input error (exit 2)."""

from __future__ import annotations

from modexp.spec import SpecError

ALLOWED = "auto, cpu, cuda, cuda:N"


def resolve_device(name: str, flag: str = "--device") -> str:
    """'auto' -> cuda if available else cpu; SpecError for an unknown or unavailable device."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda") or (dev.type == "cpu" and dev.index):
        raise SpecError(flag, [f"{name!r} is not a device; allowed: {ALLOWED}"])
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise SpecError(flag, [f"{name} requested but CUDA is not available here "
                                   f"(torch {torch.__version__}, CUDA build: "
                                   f"{torch.version.cuda or 'none'}); use --device cpu or auto"])
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise SpecError(flag, [f"{name}: this machine has "
                                   f"{torch.cuda.device_count()} CUDA device(s)"])
    return name
