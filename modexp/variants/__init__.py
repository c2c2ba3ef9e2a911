"""Variants as registry entries (issue 25.2): one module per variant declares its spec class,
its FLOP architecture, its layer module (by name: the models layer builds it), the eval loss
that scores it and its role in the verdict; registry.py holds them, and the spec, planner,
model, fingerprint and analysis ask it instead of comparing kind strings.

Built-ins, registered on import in this order (the spec's error lists kinds in it): vanilla.py
(the baseline), mod.py (learned routing, the treatment), random_routing.py (the paper's
stochastic-routing control) and gate_one.py (the gate-1 control). torch-free, below the spec:
`modexp plan` and spec validation use it.
"""

# isort: off
from modexp.variants import vanilla  # noqa: F401 (registers the built-ins, in this order)
from modexp.variants import mod  # noqa: F401
from modexp.variants import random_routing  # noqa: F401
from modexp.variants import gate_one  # noqa: F401
# isort: on
from modexp.variants.base import VariantConfig
from modexp.variants.registry import (BASELINE, CONTROL, TREATMENT, Entry, config_class, entries,
                                      entry_of, first, kinds, named, of_run, register, registered,
                                      unregister)

__all__ = ["BASELINE", "CONTROL", "TREATMENT", "Entry", "VariantConfig", "config_class", "entries",
           "entry_of", "first", "kinds", "named", "of_run", "register", "registered", "unregister"]
