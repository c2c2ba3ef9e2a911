"""The gate-1 control (`kind: mod, router: random, gate: one`): the drawn routing of random.py
with the update unscaled, x + f(x). It asks whether the chosen tokens matter once the gate is
fixed, where the paper's control asks whether a learned choice beats a drawn one."""

from __future__ import annotations

from modexp.variants.mod import ModVariant
from modexp.variants.registry import CONTROL, Entry, register

ENTRY = register(Entry("gate_one", ModVariant, CONTROL,
                       layer="modexp.models.random_routing:RandomRoutedBlock", score="causal",
                       matches=lambda v: v.router == "random" and v.gate == "one"))
