"""Building a model for a device: the one place its kernels are chosen.

modexp/kernels/ holds every fast path (hand-written backward passes, CPU attention, the
decode loop); `choose_kernels` asks it, once, which of them suit the device, and lays them
over the reference (ops.REFERENCE). The model files never import modexp/kernels/: without
it this module hands them the reference, and modexp runs correctly, only slower.
"""

from __future__ import annotations

import dataclasses
import importlib

import torch

from modexp.models.model import DEFAULT_MAX_LEN, Transformer
from modexp.models.ops import REFERENCE, Kernels
from modexp.spec import ModelConfig, ModVariant, VanillaVariant


def choose_kernels(device: str | torch.device = "cpu") -> Kernels:
    """The kernels for models on `device`: modexp.kernels' where it has them, else the reference."""
    try:
        kernels = importlib.import_module("modexp.kernels")
    except ModuleNotFoundError as e:
        if e.name != "modexp.kernels":  # a kernel's own import failing is a bug: say so
            raise
        return REFERENCE
    device = torch.device(device)
    return dataclasses.replace(REFERENCE, name=device.type, **kernels.for_device(device))


def build_model(model: ModelConfig, variant: VanillaVariant | ModVariant, vocab: int, *,
                seq_len: int | None = None, device: str | torch.device = "cpu",
                kernels: Kernels | None = None) -> Transformer:
    """The LM described by a model config and a variant (vanilla or MoD), on `device`.

    seq_len: the longest sequence a forward pass will see (the spec's data.seq_len), so the
    RoPE tables are made here, never grown inside a forward pass. The weights are drawn on
    the CPU (the run seed fixes them on every device), then moved. kernels: default
    choose_kernels(device).
    """
    kernels = kernels if kernels is not None else choose_kernels(device)
    net = Transformer(model, variant, vocab, kernels, seq_len or DEFAULT_MAX_LEN)
    return net.to(device)
