"""Did a causal decode route at capacity? What `modexp sample` and `modexp bench` state next to
their figures: per routed layer, the fraction of decoded tokens that ran the block against the
layer's capacity, the decode FLOP ratio (vanilla / MoD, flops.decode_flops) AT the fraction
actually routed, and a flag for a layer more than 2 points off (its figures then describe a
model other than the one trained). No torch: plain arithmetic on flops.py.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from modexp import flops

TOLERANCE = 0.02  # 2 points of routed fraction (the target on held-out data)


@dataclass
class RoutingCheck:
    """One decode's routed fractions against capacity, and its FLOP ratio at those fractions."""

    layers: list[int]  # routed layer indices
    capacity: list[float]  # per routed layer: k/T at the trained seq_len (what top-k routes)
    routed: list[float]  # per routed layer: fraction of decoded tokens that ran the block
    flop_ratio: float  # decode FLOPs vanilla / MoD, MoD at the routed fractions

    @property
    def off(self) -> list[int]:
        """Routed layers whose fraction is more than TOLERANCE from their capacity."""
        return [i for i, c, f in zip(self.layers, self.capacity, self.routed)
                if abs(f - c) > TOLERANCE]

    def summary(self) -> str:
        """One line: fractions vs capacity, the FLOP ratio, and the flag."""
        per = ", ".join(f"L{i} {f:.1%} (capacity {c:.1%})"
                        for i, c, f in zip(self.layers, self.capacity, self.routed))
        line = f"routed (causal) {per}; decode FLOPs vanilla/MoD at these fractions {self.flop_ratio:.2f}x"
        if self.off:
            line += (f"; OFF CAPACITY by more than {TOLERANCE:.0%} at "
                     f"{', '.join(f'L{i}' for i in self.off)}: not the compute the model trained at")
        return line


def check_routing(model_cfg, variant, vocab: int, seq_len: int, routed: list[float],
                  prompt_len: int, steps: int) -> RoutingCheck:
    """The check for a MoD model (spec configs) that decoded `steps` tokens after a prompt."""
    arch = flops.arch_from_config(model_cfg, variant, vocab)
    layers = [i for i, c in enumerate(arch.capacities) if c is not None]
    capacity = [flops.routed_k(arch.capacities[i], seq_len) / seq_len for i in layers]
    at = iter(routed)
    measured = dataclasses.replace(arch, capacities=tuple(
        None if c is None else next(at) for c in arch.capacities))
    dense = dataclasses.replace(arch, capacities=(None,) * arch.n_layers, predictor_hidden=0)
    ratio = flops.decode_flops(dense, prompt_len, steps) / flops.decode_flops(measured, prompt_len, steps)
    return RoutingCheck(layers, capacity, list(routed), ratio)
