"""Experiment spec: YAML -> typed, frozen, validated config (the single source of truth).

`config.py` declares and checks every field; `load.py` reads a file and reports every problem
in it at once, one line per field, as `SpecError` (the CLI turns it into exit code 2). No torch
import: `modexp plan` must stay fast.
"""

from modexp.spec.config import (RANDOM_DRAWS, ROUTER_ONLY, BudgetGrid, DataConfig, ExperimentSpec,
                                FlopsConfig, ModelConfig, ModVariant, SpecError, TrainConfig,
                                VanillaVariant)
from modexp.spec.load import load_spec, parse_spec, spec_to_dict

__all__ = ["RANDOM_DRAWS", "ROUTER_ONLY", "BudgetGrid", "DataConfig", "ExperimentSpec", "FlopsConfig",
           "ModelConfig", "ModVariant", "SpecError", "TrainConfig", "VanillaVariant",
           "load_spec", "parse_spec", "spec_to_dict"]
