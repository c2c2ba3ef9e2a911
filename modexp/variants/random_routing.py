"""The paper's stochastic-routing control (Raposo et al. 2024, fig. 3): a MoD whose router
weights are drawn per token from N(0, 1), top-k of them, each chosen token's update scaled by
the variant's gate of its draw (`kind: mod, router: random`, gate sigmoid or identity). Its
layer is models/random_routing.py's; FLOPs a learned MoD's minus the router."""

from __future__ import annotations

from modexp.variants.mod import ModVariant
from modexp.variants.registry import CONTROL, Entry, register

ENTRY = register(Entry("random", ModVariant, CONTROL,
                       layer="modexp.models.random_routing:RandomRoutedBlock", score="causal",
                       matches=lambda v: v.router == "random" and v.gate != "one"))
