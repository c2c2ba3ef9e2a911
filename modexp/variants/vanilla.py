"""The dense transformer: every token through every block. The study's baseline."""

from __future__ import annotations

from typing import Literal

from modexp.variants.base import VariantConfig
from modexp.variants.registry import BASELINE, Entry, register


class VanillaVariant(VariantConfig):
    """A dense transformer: every token through every block."""

    kind: Literal["vanilla"]


ENTRY = register(Entry("vanilla", VanillaVariant, BASELINE, layer=None, score="topk"))
