"""Mixture-of-Depths (Raposo et al. 2024, arXiv 2404.02258) with a learned router: routed
blocks process the top-k tokens of each sequence their router scores highest. The study's
treatment; its spec class `ModVariant` (`kind: mod`) also declares the random-routing controls
(`router: random`: random_routing.py, gate_one.py). Its layer is models/mod.py's RoutedBlock.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from modexp import flops
from modexp.variants.base import VariantConfig
from modexp.variants.registry import TREATMENT, Entry, register

ROUTER_ONLY = ("causal", "aux_loss_weight", "predictor_hidden", "predictor_lr",
               "threshold", "prefix_prior")
"""ModVariant fields that only a learned router uses: random routing has no router to set
(its gate it shares: the drawn weights are gated as learned ones are)."""


RANDOM_DRAWS = "normal/splitmix64(seed, layer, step, row, position)"
"""How router: random draws its weights (models/random_routing.py), recorded in each such run's
plan entry and fingerprint: runs drawn otherwise (the uniform gate-1 draws of before) differ."""


class ModVariant(VariantConfig):
    """Mixture-of-Depths (Raposo et al. 2024): routed blocks process top-k tokens per sequence."""

    kind: Literal["mod"]
    capacity: float = Field(0.125, gt=0, le=1)
    """Fraction of each sequence a routed block processes: k = max(1, floor(capacity * T))."""
    route_every: int = Field(2, ge=1)
    """Route every n-th block: layers n-1, 2n-1, ... (paper: every other block, n = 2, the
    first block dense; n = 1 routes every block, the first too)."""
    layers: dict[int, Annotated[float, Field(gt=0, le=1)]] | None = None
    """Explicit per-layer capacities {layer_index: capacity}; overrides capacity/route_every."""
    causal: Literal["predictor", "aux_loss", "none"] = "predictor"
    """How sampling decides per token: a predictor MLP, the router logit (aux BCE loss), or none.
    With aux_loss_weight 0 the decision is the router's own logit, unshaped by any loss: the
    shipped CPU specs' choice (as accurate as a predictor there, at no FLOPs; README)."""
    gate: Literal["identity", "sigmoid", "one"] = "sigmoid"
    """g(r) scaling the block update. Paper: identity; sigmoid bounds it (NaN-free default).
    `one` (router: random only): the update unscaled, x + f(x): the gate-1 control, which asks
    whether the chosen tokens matter once the gate is fixed."""
    aux_loss_weight: float = Field(0.01, ge=0)
    """Weight of the router BCE loss (causal: aux_loss) added to the LM loss."""
    predictor_hidden: int = Field(64, ge=1)
    """Hidden width of the causal predictor MLP (causal: predictor)."""
    predictor_lr: float | None = Field(None, gt=0)
    """Peak learning rate of the predictors' own AdamW (same schedule as the LM); default train.lr."""
    threshold: Literal["prefix", "calibrated", "zero"] = "prefix"
    """Causal decision: logit > a threshold per position that blends the calibrated one with the
    top-k threshold of the sequence's own prefix (prefix: modexp/models/decision.py), logit > a
    per-layer threshold calibrated so the causal pass routes the capacity fraction of training
    tokens (calibrated), or logit > 0 (zero: under-routes)."""
    prefix_prior: int = Field(16, ge=0)
    """threshold: prefix: the calibrated threshold's weight, in tokens, against the prefix's
    own (at n tokens the prefix weighs n / (n + prefix_prior)); on the quickstart's checkpoints
    8 and 16 scored alike, best of 0-128."""
    router: Literal["learned", "random"] = "learned"
    """`learned`: top-k of a learned router. `random`: the paper's stochastic-routing control
    (Raposo et al. 2024, fig. 3): router weights drawn per token from N(0, 1), top-k of them,
    each chosen token's update scaled by `gate` of its drawn weight; no router matmul or
    predictor. Its causal routing (evaluation, sampling) routes a token iff its draw exceeds
    the Gaussian's (1 - capacity) quantile (modexp/models/random_routing.py)."""

    @model_validator(mode="after")
    def _random_takes_no_router_settings(self):
        # A value equal to its default is accepted: the resolved spec written to run.json
        # carries every field, and must parse again (sample, bench, fingerprints read it);
        # so is threshold: calibrated, the default those files carry from before `prefix`
        unused = sorted(f for f in ROUTER_ONLY
                        if f in self.model_fields_set
                        and getattr(self, f) != type(self).model_fields[f].default
                        and (f, getattr(self, f)) != ("threshold", "calibrated"))
        if self.router == "random" and unused:
            raise ValueError(f"router: random has no router or predictor; remove {', '.join(unused)}")
        if self.router == "learned" and self.gate == "one":
            raise ValueError("gate: one is the random-routing control's (router: random); a learned "
                             "router is trained through its gate: use sigmoid or identity")
        return self

    @field_validator("layers")
    @classmethod
    def _layers_nonempty(cls, v):
        if v is not None and not v:
            raise ValueError("layers must name at least one layer, or be omitted")
        if v is not None and any(i < 0 for i in v):
            raise ValueError("layer indices must be >= 0")
        return v

    def capacities(self, n_layers: int) -> list[float | None]:
        """Per-layer capacity, None for a dense layer."""
        if self.layers is not None:
            return [self.layers.get(i) for i in range(n_layers)]
        n = self.route_every
        return [self.capacity if i % n == n - 1 else None for i in range(n_layers)]

    def arch(self, model, vocab: int) -> flops.Arch:
        """Its routed layers at `capacities`; a learned router's matmul and, with causal:
        predictor, its predictor MLP; random routing neither (no router, no predictor)."""
        learned = self.router == "learned"
        hidden = self.predictor_hidden if learned and self.causal == "predictor" else 0
        return flops.model_arch(model, vocab, capacities=tuple(self.capacities(model.n_layers)),
                                predictor_hidden=hidden, router=learned)

    def problems(self, model) -> list[str]:
        """An explicit layer the model does not have."""
        bad = [i for i in self.layers or {} if i >= model.n_layers]
        return [f"layers: layer {bad[0]} does not exist in model {model.name} "
                f"(layers 0..{model.n_layers - 1})"] if bad else []

    def draws(self) -> str | None:
        return RANDOM_DRAWS if self.router == "random" else None

    @classmethod
    def fingerprint_fields(cls, variant: dict, plan: dict) -> tuple[dict, dict]:
        """Random routing: its router settings change nothing it computes (left out), and how
        it draws (the plan's `draws`) is in: run.json files drawn otherwise have none."""
        if variant.get("router") != "random":
            return variant, {}
        return {k: v for k, v in variant.items() if k not in ROUTER_ONLY}, {"draws": plan.get("draws")}


ENTRY = register(Entry("mod", ModVariant, TREATMENT, layer="modexp.models.mod:RoutedBlock",
                       score="causal", matches=lambda v: v.router == "learned"))
