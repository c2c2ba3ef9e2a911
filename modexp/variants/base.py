"""What every variant's spec class shares: strict (unknown keys refused, frozen) and the few
methods the planner, the model, the spec's cross-checks and the fingerprint ask of it."""

from __future__ import annotations

from typing import get_args

from pydantic import BaseModel, ConfigDict

from modexp import flops


class Strict(BaseModel):
    """A typed config: unknown keys refused, values frozen (the spec's sections too)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class VariantConfig(Strict):
    """A variant's spec section. A subclass declares `kind: Literal["<its kind>"]` first."""

    @classmethod
    def kind_name(cls) -> str:
        """The one value of this class's `kind` Literal."""
        (kind,) = get_args(cls.model_fields["kind"].annotation)
        return kind

    def capacities(self, n_layers: int) -> list[float | None]:
        """Per layer: the fraction of tokens its routed layer runs, None for a dense layer."""
        return [None] * n_layers

    def arch(self, model, vocab: int) -> flops.Arch:
        """Its FLOP architecture on a model size (spec.ModelConfig): what flops.py and
        memory.py count. Default: routed layers at `capacities` (none: dense), each with a
        learned router."""
        caps = tuple(self.capacities(model.n_layers))
        return flops.model_arch(model, vocab, capacities=caps if any(c is not None for c in caps) else ())

    def problems(self, model) -> list[str]:
        """Lines (after `variants.<name>`) saying why it cannot run on this model size."""
        return []

    def draws(self) -> str | None:
        """How its routing is drawn, when it is (recorded in the plan and the fingerprint)."""
        return None

    @classmethod
    def fingerprint_fields(cls, variant: dict, plan: dict) -> tuple[dict, dict]:
        """(its fields, extra plan fields) as the run fingerprint compares them, from run.json's
        dicts: a field that changes nothing it computes may be left out."""
        return variant, {}
