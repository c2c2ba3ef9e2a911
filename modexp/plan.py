"""The planner: spec -> one FLOP-matched entry per run (pure accounting, no torch).

One explicit rule fixes every horizon (as nanochat derives its horizon from a FLOP target):
    steps = round(budget / flops_per_step),  flops_per_step = batch_size * train_flops(T)
so every run of a budget spends the same training FLOPs to within half a step, whatever its
size or variant, and MoD, cheaper per step, takes more steps. Warmup, decay and eval points
are fractions of these steps, hence fractions of the FLOP budget.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from modexp import flops as F
from modexp import variants
from modexp.data.facts import resolved_spec
from modexp.memory import (MemoryEstimate, fit_advice, micro_batch_by_estimate, size,
                           training_memory)
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
    draws: str | None = None  # drawn routing (router: random): how (VariantConfig.draws)
    entry: str | None = None  # the variant's registry entry (modexp/variants): its role, its metric
    family: str | None = None  # shape family the analysis fits it in (ModelConfig.family_name)
    n_layers: int | None = None  # the model's depth (the analysis needs no spec to group runs)
    # memory.training_memory's parts in bytes, for one process at the run's micro-batch, with
    # train.activation_checkpointing and train.parallel (fsdp: shards over the processes):
    # float32 (the CPU), or bfloat16 (CUDA) when planned for a device (`plan --device-memory`)
    memory: dict | None = None
    micro_batch_size: int | str | None = None  # per forward pass (the model's, else train's); "auto"
    micro_batch_auto: int | None = None  # auto's choice: by the estimate for --device-memory in
    # a plan; in run.json, what the run trains with (modexp/runs/runner.py)

    def to_dict(self) -> dict:
        """Plain data for JSON."""
        return asdict(self)


@dataclass(frozen=True)
class Target:
    """Where a plan's memory estimates are for: one process on the CPU (float32, the default),
    or `processes` processes on devices of `device_bytes` each (bfloat16 autocast: CUDA)."""

    device_bytes: int | None = None
    processes: int = 1

    @property
    def dtype(self) -> str:
        """The Trainer's precision there: bf16 autocast on a GPU, float32 on the CPU."""
        return "float32" if self.device_bytes is None else "bfloat16"


@dataclass
class Plan:
    """All runs of a spec, in stable order (budget, model, variant, seed), plus warnings and
    notes (facts worth a line, e.g. the data source as resolved)."""

    runs: list[RunPlan]
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def eval_steps(steps: int, points: int) -> list[int]:
    """Steps at k/points of the run, k = 1..points (the same budget fractions for every run)."""
    return sorted({max(1, round(k * steps / points)) for k in range(1, points + 1)})


def _memory(spec: ExperimentSpec, model, arch, target: Target) -> tuple[dict, int | None]:
    """(the training_memory of one of the target's processes at this size's micro-batch, auto's
    choice by the estimate or None). `auto` is estimated at its choice for a device, else at
    the whole per-process batch (the most auto may take)."""
    per = spec.batch_size(model) // target.processes
    mb, train = spec.micro_batch_size(model), spec.train
    shards = target.processes if train.parallel == "fsdp" else 1
    chosen = None
    if mb == "auto" and target.device_bytes is not None:
        chosen = micro_batch_by_estimate(arch, spec.data.seq_len, per, target.device_bytes,
                                         target.dtype, train.activation_checkpointing, shards) or None
    micro = chosen or min(per if mb in (None, "auto") else mb, per)
    est = training_memory(arch, spec.data.seq_len, micro, target.dtype,
                          train.activation_checkpointing, shards)
    return est.to_dict(), chosen


def _entry(spec: ExperimentSpec, budget: float, model, vname: str, seed: int,
           target: Target = Target()) -> RunPlan:
    variant, T, B = spec.variants[vname], spec.data.seq_len, spec.batch_size(model)
    arch = F.arch_from_config(model, variant, spec.data.vocab)
    conv = spec.flops.convention
    per_step = B * F.train_flops(arch, T, conv)
    steps = round(budget / per_step)
    total = steps * per_step
    counts = F.param_counts(arch)
    memory, auto = _memory(spec, model, arch, target)
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
        router=getattr(variant, "router", None), family=model.family_name,
        draws=variant.draws(), entry=variants.entry_of(variant).name,
        n_layers=model.n_layers,
        memory=memory, micro_batch_size=spec.micro_batch_size(model), micro_batch_auto=auto)


def _with_ratios(runs: list[RunPlan]) -> list[RunPlan]:
    """Attach each run's forward-FLOP ratio against the vanilla run of the same size."""
    vanilla = {r.model: r.forward_flops_per_token for r in runs
               if variants.named(r.entry).role == variants.BASELINE}
    return [replace(r, fwd_ratio_vs_vanilla=r.forward_flops_per_token / vanilla[r.model])
            if r.model in vanilla else r for r in runs]


def routes_no_layer(spec: ExperimentSpec, model, vname: str) -> bool:
    """True for a routed variant (its entry has a routed layer) whose routing pattern routes
    no layer of this model (e.g. one layer with route_every 2): that run would be a vanilla
    model under a MoD name."""
    v = spec.variants[vname]
    return (variants.entry_of(v).layer is not None
            and all(c is None for c in v.capacities(model.n_layers)))


def build_plan(spec: ExperimentSpec, source: str = "<spec>", train_tokens: int | None = None,
               target: Target = Target()) -> Plan:
    """Plan every run; raise SpecError for a budget below one step or past STEP_LIMIT steps,
    or for a variant left with no run. A MoD variant is not planned on a model it routes no
    layer of (one warning line per variant, naming the models). `train_tokens` sets epochs.
    `target`: where the memory estimates are for; with a device size, one warning per run
    whose step will not fit it, naming what would."""
    runs, problems, skipped = [], [], {}
    problems += _process_problems(spec, target)
    if problems:
        raise SpecError(source, problems)
    for i, (budget, models) in enumerate(spec.grids()):
        for model in models:
            for vname in spec.variants_at(i):
                if not spec.trains(i, model, vname):  # budgets[i].variant_families
                    continue
                if routes_no_layer(spec, model, vname):
                    skipped.setdefault((vname, model.name), model)
                    continue
                for seed in spec.seeds:
                    r = _entry(spec, budget, model, vname, seed, target)
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
    planned = {r.variant for r in runs}
    problems += [f"variants.{v}: routes no layer of any model it is planned on "
                 f"({', '.join(m for w, m in skipped if w == v)}); nothing to plan for it "
                 "(give it deeper models, or layers / route_every that route one)"
                 for v in dict.fromkeys(v for v, _ in skipped) if v not in planned]
    if problems:
        raise SpecError(source, sorted(set(problems), key=problems.index))
    warnings = []
    for v in dict.fromkeys(v for v, _ in skipped):
        models = [m for (w, _), m in skipped.items() if w == v]
        if v in planned:
            warnings.append(f"variant {v} is not planned on model(s) {', '.join(m.name for m in models)}: "
                            "its routing pattern routes none of their layers (each would be a vanilla model)")
    warnings += _fit_warnings(spec, runs, target)
    plan = Plan(_with_ratios(runs), warnings)
    if train_tokens:
        plan = _with_epochs(plan, train_tokens)
    return plan


def _process_problems(spec: ExperimentSpec, target: Target) -> list[str]:
    """--processes must split every size's batch, and leave each fixed micro-batch a divisor
    of the per-process batch."""
    n, out = target.processes, []
    for m in spec.models:
        B, mb = spec.batch_size(m), spec.micro_batch_size(m)
        if B % n:
            out.append(f"--processes: {n} processes do not split model {m.name}'s batch_size "
                       f"{B}; allowed: a divisor of {B}")
        elif isinstance(mb, int) and (B // n) % min(mb, B // n):
            out.append(f"--processes: {n} processes leave model {m.name} {B // n} sequences "
                       f"each, which micro_batch_size {mb} does not divide")
    return list(dict.fromkeys(out))


def _fit_warnings(spec: ExperimentSpec, runs: list[RunPlan], target: Target) -> list[str]:
    """One line per run whose estimated step exceeds the target device's memory: its
    estimate and what would make it fit (memory.fit_advice)."""
    if target.device_bytes is None:
        return []
    models, out, train = {m.name: m for m in spec.models}, [], spec.train
    for r in runs:
        total = r.memory["total"]
        if total <= target.device_bytes:
            continue
        arch = F.arch_from_config(models[r.model], spec.variants[r.variant], r.vocab)
        per = r.batch_size // target.processes
        advice = fit_advice(arch, r.seq_len, per, r.memory["micro_batch"], target.dtype,
                            train.activation_checkpointing, train.parallel, target.processes,
                            target.device_bytes)
        est = MemoryEstimate(**{k: v for k, v in r.memory.items() if k != "total"})
        out.append(f"{r.run_id}: will not fit a device of {size(target.device_bytes)} "
                   f"(--device-memory): a training step needs about {est.summary()} per "
                   "process; would fit with: " + "; or ".join(advice))
    return out


def _with_epochs(plan: Plan, train_tokens: int) -> Plan:
    runs = [replace(r, epochs=r.tokens / train_tokens) for r in plan.runs]
    warnings = [f"{r.run_id}: {r.tokens:,} training tokens is {r.epochs:.2f} epochs of the "
                f"{train_tokens:,}-token training split (data will repeat)"
                for r in runs if r.epochs > 1]
    return Plan(runs, plan.warnings + warnings, plan.notes)


def plan_spec(spec: ExperimentSpec, source: str = "<spec>", target: Target = Target()) -> Plan:
    """Plan a spec with its data source's vocabulary and training tokens (epochs); see
    plan_resolved."""
    return plan_resolved(spec, source, target)[1]


def plan_resolved(spec: ExperimentSpec, source: str = "<spec>",
                  target: Target = Target()) -> tuple[ExperimentSpec, Plan]:
    """The spec as planned (a prepared folder's vocabulary filled in) and its plan. A missing
    data source is an error naming data.source unless the spec gives vocab_size: then planning
    is accounting done before the data exists (a cluster's corpus, say), with one warning;
    `modexp run` refuses it."""
    spec, facts = resolved_spec(spec, source)
    plan = build_plan(spec, source, train_tokens=facts.train_tokens, target=target)
    plan.notes.append(facts.note())
    if facts.missing:
        plan.warnings.append(f"data.source: {facts.missing}: planned without the data (vocab_size "
                             f"{facts.vocab} from the spec, epochs not computed); `modexp run` "
                             "needs it")
    return spec, plan


def plan_file(path, overrides=(), target: Target = Target()) -> tuple[ExperimentSpec, Plan]:
    """Load, validate and plan a spec file with its `--set` overrides and its data source
    (`modexp plan` adds the bracket warnings of modexp/grid.py, which sits above the planner
    and plans candidate sizes with it)."""
    return plan_resolved(load_spec(path, overrides), str(path), target)
