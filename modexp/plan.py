"""The planner: spec -> one FLOP-matched entry per run (pure accounting, no torch).

One explicit rule fixes every horizon (as nanochat derives its horizon from a FLOP target):
    steps = round(budget / flops_per_step),  flops_per_step = batch_size * train_flops(T)
so every run of a budget spends the same training FLOPs to within half a step, whatever its
size or variant, and MoD, cheaper per step, takes more steps. Warmup, decay and eval points
are fractions of these steps, hence fractions of the FLOP budget.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from modexp import flops as F
from modexp.data.corpus import SourceError, resolve_source
from modexp.memory import training_memory
from modexp.naming import run_id
from modexp.spec import ExperimentSpec, SpecError, load_spec

STEP_LIMIT = 2 ** 32
"""Most steps a run may take: the data sampler seeds step s's batch with s as one 32-bit word
(modexp/data/tokens.py batch_seed, steps 0..steps-1), and refuses s >= 2**32."""


@dataclass(frozen=True)
class RunPlan:
    """Everything the trainer needs to know about one run's horizon and cost."""

    run_id: str
    experiment: str
    budget: float
    model: str
    variant: str
    kind: str  # vanilla | mod
    seed: int
    convention: str
    seq_len: int
    batch_size: int
    vocab: int
    params: int
    params_non_embedding: int
    forward_flops_per_token: float  # one forward pass as sampled (LM + predictors), per token
    flops_per_step: int  # training FLOPs of one optimiser step (batch_size sequences)
    steps: int
    tokens: int
    total_flops: int
    residual: float  # total_flops - budget
    residual_pct: float
    warmup_steps: int
    eval_steps: list[int]
    capacities: list[float | None]
    fwd_ratio_vs_vanilla: float | None = None  # MoD forward FLOPs / vanilla of the same size
    epochs: float | None = None  # training tokens / training-split tokens
    lr: float | None = None  # peak lr of this run (the model's own, else train.lr)
    router: str | None = None  # MoD: learned | random (the stochastic-routing control)
    memory: dict | None = None  # memory.training_memory's parts in bytes: one process, float32


    def to_dict(self) -> dict:
        """Plain data for JSON."""
        return asdict(self)


@dataclass
class Plan:
    """All runs of a spec, in stable order (budget, model, variant, seed), plus warnings."""

    runs: list[RunPlan]
    warnings: list[str] = field(default_factory=list)


def eval_steps(steps: int, points: int) -> list[int]:
    """Steps at k/points of the run, k = 1..points (the same budget fractions for every run)."""
    return sorted({max(1, round(k * steps / points)) for k in range(1, points + 1)})


def _entry(spec: ExperimentSpec, budget: float, model, vname: str, seed: int) -> RunPlan:
    variant, T, B = spec.variants[vname], spec.data.seq_len, spec.batch_size(model)
    arch = F.arch_from_config(model, variant, spec.data.vocab)
    conv = spec.flops.convention
    per_step = B * F.train_flops(arch, T, conv)
    steps = round(budget / per_step)
    total = steps * per_step
    counts = F.param_counts(arch)
    return RunPlan(
        run_id=run_id(budget, model.name, vname, seed), experiment=spec.name, budget=budget,
        model=model.name, variant=vname, kind=variant.kind, seed=seed, convention=conv,
        seq_len=T, batch_size=B, vocab=spec.data.vocab, params=counts["total"],
        params_non_embedding=counts["non_embedding"],
        forward_flops_per_token=F.inference_flops(arch, T, conv) / T, flops_per_step=per_step,
        steps=steps, tokens=steps * B * T, total_flops=total, residual=total - budget,
        residual_pct=100 * (total - budget) / budget,
        warmup_steps=round(spec.train.warmup * steps),
        eval_steps=eval_steps(steps, spec.train.eval_points),
        capacities=list(arch.capacities) or [None] * model.n_layers, lr=spec.lr(model),
        router=getattr(variant, "router", None),
        memory=training_memory(arch, T, min(spec.train.micro_batch_size or B, B)).to_dict())


def _with_ratios(runs: list[RunPlan]) -> list[RunPlan]:
    """Attach each run's forward-FLOP ratio against the vanilla run of the same size."""
    vanilla = {r.model: r.forward_flops_per_token for r in runs if r.kind == "vanilla"}
    return [replace(r, fwd_ratio_vs_vanilla=r.forward_flops_per_token / vanilla[r.model])
            if r.model in vanilla else r for r in runs]


def build_plan(spec: ExperimentSpec, source: str = "<spec>", train_tokens: int | None = None) -> Plan:
    """Plan every run; raise SpecError for a budget below one step or past STEP_LIMIT steps.
    `train_tokens` sets epochs."""
    runs, problems = [], []
    for i, (budget, models) in enumerate(spec.grids()):
        for model in models:
            for vname in spec.variants_at(i):
                for seed in spec.seeds:
                    r = _entry(spec, budget, model, vname, seed)
                    if r.steps < 1 or budget < r.flops_per_step:
                        problems.append(
                            f"budgets[{i}]: {budget:g} FLOPs is less than one training step of "
                            f"model {model.name} / variant {vname} ({r.flops_per_step:.3g} FLOPs); "
                            f"allowed: >= {r.flops_per_step:.3g}")
                        break
                    if r.steps > STEP_LIMIT:
                        problems.append(
                            f"budgets[{i}]: {budget:g} FLOPs is {r.steps:,} steps of model "
                            f"{model.name} / variant {vname}, past the data sampler's "
                            f"{STEP_LIMIT:,} (each step's batch is seeded by a 32-bit step "
                            f"number); allowed: <= {STEP_LIMIT * r.flops_per_step:.3g} FLOPs "
                            "for this model, or a larger model or batch")
                        break
                    runs.append(r)
    if problems:
        raise SpecError(source, sorted(set(problems), key=problems.index))
    plan = Plan(_with_ratios(runs))
    if train_tokens:
        plan = _with_epochs(plan, train_tokens)
    return plan


def _with_epochs(plan: Plan, train_tokens: int) -> Plan:
    runs = [replace(r, epochs=r.tokens / train_tokens) for r in plan.runs]
    warnings = [f"{r.run_id}: {r.tokens:,} training tokens is {r.epochs:.2f} epochs of the "
                f"{train_tokens:,}-token training split (data will repeat)"
                for r in runs if r.epochs > 1]
    return Plan(runs, plan.warnings + warnings)


def plan_spec(spec: ExperimentSpec, source: str = "<spec>") -> Plan:
    """Plan a spec; the data source sets epochs. A missing source is only a warning here:
    planning is accounting, done before data exists (a cluster's corpus, say); `run` refuses it."""
    try:
        train_tokens = resolve_source(spec.data.source, spec.data.vocab).train_tokens(spec.data.val_fraction)
    except SourceError as e:
        plan = build_plan(spec, source)
        plan.warnings.append(f"data.source: {e} (epochs not computed; `modexp run` needs it)")
        return plan
    return build_plan(spec, source, train_tokens=train_tokens)


def val_tokens(n_tokens: int, val_fraction: float) -> int:
    """Held-out tokens at the end of the corpus (data/tokens.py splits there too)."""
    return int(n_tokens * val_fraction)


def plan_file(path, results=None, overrides=()) -> tuple[ExperimentSpec, Plan]:
    """Load, validate and plan a spec file with its `--set` overrides (what `modexp plan`
    calls); with a results root, warn where a budget's grid does not bracket its estimated
    optimum (modexp/grid.py)."""
    spec = load_spec(path, overrides)
    plan = plan_spec(spec, str(path))
    if results is not None:
        from modexp.grid import bracket_warnings  # grid -> plan: imported here, no cycle

        plan.warnings += bracket_warnings(spec, Path(results) / spec.name)
    return spec, plan
