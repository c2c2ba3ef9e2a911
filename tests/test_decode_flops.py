"""flops.decode_flops against torch's FlopCounterMode on real KV-cached decoding."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from modexp import flops
from modexp.models.decode import generate
from modexp.models.build import build_model
from modexp.spec import ModelConfig, ModVariant, VanillaVariant

CFG = ModelConfig(name="t", n_layers=4, d_model=32, n_heads=2)
MOD = ModVariant(kind="mod", capacity=0.25, causal="predictor", predictor_hidden=8)


def counted_decode(net, prompt: torch.Tensor, steps: int) -> int:
    """FLOPs torch counts for `steps` decode steps: generate(steps + 1) less its prefill."""
    def count(n: int) -> int:
        # MATH SDPA decomposes attention into counted matmuls (the CPU flash kernel is not).
        with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            generate(net, prompt, n, temperature=0.0)
        return counter.get_total_flops()
    return count(steps + 1) - count(1)


@pytest.mark.parametrize("route", [None, 0.0, 1.0])  # vanilla; MoD skipping all; routing all
def test_decode_flops_match_the_counted_decode(route):
    torch.manual_seed(0)
    variant = VanillaVariant(kind="vanilla") if route is None else MOD
    net = build_model(CFG, variant, 64).eval()
    arch = flops.arch_from_config(CFG, variant, 64)
    if route is not None:  # every predictor decides the same way for every token
        for d in net.decisions():
            d.predictor[2].bias.data.fill_(100.0 if route else -100.0)
        caps = tuple(None if c is None else route for c in arch.capacities)
        arch = dataclasses.replace(arch, capacities=caps)
    prompt = torch.randint(0, 64, (2, 5), generator=torch.Generator().manual_seed(0))
    assert counted_decode(net, prompt, 7) == 2 * flops.decode_flops(arch, 5, 7)  # 2 rows
