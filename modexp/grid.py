"""Grid suggestion: per shape family, model sizes that bracket each budget's estimated
compute-optimal size; and the warning when a family's grid does not.

A family is a depth (or a named shape rule: ModelConfig.family), as the analysis fits it.
Each family the spec uses gets its own ladder: widths about 1.5x apart at the family's depth,
with its other settings (mlp, tied embeddings, RoPE base); a family whose models mix depths
follows no rule this module can extend, so its ladder is its own models. The estimate (no
torch, no training):
- from the results folder, the baseline's own optima in that family at >= 2 budgets
  (N_opt = A C^a fitted to them), else the baseline's frontier over families
  (verdict.frontier, Hoffmann approach 2), mapped to the family's sizes by total params;
- else Chinchilla's rule of about 20 training tokens per parameter (Hoffmann et al. 2022),
  with parameters counted the way the FLOP convention counts them: N_f = training FLOPs per
  token / 6, so that C = 6 N_f D and D = 20 N_f give N_f = sqrt(C / 120). At tiny scale the
  embedding table is most of the parameters but costs no FLOPs, so total parameters would
  put the estimate far off.
Only sizes `plan` accepts at that budget are proposed: each candidate is planned on its own
(modexp.plan.build_plan) with the budget's variants, so a size whose single step exceeds the
budget, or any other size the planner or the spec's checks refuse, is never printed. The
suggestion is the accepted ladder size nearest the estimate and two on each side, printed as
YAML to paste into a spec.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import yaml

from modexp import flops as F
from modexp.naming import budget_tag
from modexp.plan import STEP_LIMIT, Plan, Target, build_plan, routes_no_layer
from modexp.plan import plan_file as plan_spec_file
from modexp.spec import ExperimentSpec, ModelConfig, SpecError, VanillaVariant, parse_spec, spec_to_dict

TOKENS_PER_PARAM = 20  # Chinchilla (Hoffmann et al. 2022, table 3)
SIDE = 2  # ladder sizes suggested on each side of the estimate
WIDTHS = (8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048)
KEEP = ("mlp", "tie_embeddings", "rope_base", "family")  # a family's settings its ladder copies


def flop_params(model: ModelConfig, spec: ExperimentSpec) -> float:
    """Parameters as the FLOP convention counts them: vanilla training FLOPs per token / 6."""
    T = spec.data.seq_len
    return F.train_flops(_arch(model, spec), T, spec.flops.convention) / T / 6


def chinchilla_nopt(budget: float) -> float:
    """N_f with D = 20 N_f and C = 6 N_f D."""
    return math.sqrt(budget / (6 * TOKENS_PER_PARAM))


def _arch(model: ModelConfig, spec: ExperimentSpec):
    return F.arch_from_config(model, VanillaVariant(kind="vanilla"), spec.data.vocab)


def families(spec: ExperimentSpec) -> dict[str, list[ModelConfig]]:
    """Family -> the spec's models in it, families by depth (as the analysis orders them)."""
    out: dict[str, list[ModelConfig]] = {}
    for m in sorted(spec.models, key=lambda m: m.n_layers):
        out.setdefault(m.family_name, []).append(m)
    return out


def ladder(models: list[ModelConfig]) -> list[ModelConfig]:
    """One family's candidate sizes: WIDTHS at its depth with its settings (heads of 64, at
    least 2), or its own models when they mix depths."""
    depths = {m.n_layers for m in models}
    if len(depths) > 1:
        return list(models)
    base, (L,) = models[0], depths
    keep = {k: getattr(base, k) for k in KEEP if k in base.model_fields_set}
    prefix = re.sub(r"[^A-Za-z0-9_.]", "_", base.family_name)
    out = []
    for d in WIDTHS:
        try:
            out.append(ModelConfig(name=f"{prefix}d{d}", n_layers=L, d_model=d, n_heads=max(2, d // 64), **keep))
        except ValueError:  # a shape the spec's checks refuse is no candidate
            continue
    return out


# ---------------------------------------------------------------- the estimate


def _power_law(points: list[tuple[float, float]]) -> tuple[float, float] | None:
    """(A, a) of N = A C^a through (C, N) points, or None with fewer than 2 budgets."""
    if len({c for c, _ in points}) < 2:
        return None
    a, log_a = np.polyfit(np.log10([c for c, _ in points]), np.log10([n for _, n in points]), 1)
    return float(10 ** log_a), float(a)


def _results_laws(results: Path | None) -> tuple[dict, tuple | None]:
    """From a results folder: (family -> (A, a, n, variant) of the baseline's optima in that
    family, the baseline's frontier over families as (A, a, n, variant) or None)."""
    if results is None or not results.is_dir():
        return {}, None
    from modexp.analysis.verdict import verdict_json  # grid -> analysis, only with results

    try:
        v = verdict_json(results)
    except SpecError:
        return {}, None
    per: dict[tuple[str, str], list] = {}
    for b in v["budgets"]:
        for name, f in b["fits"].items():
            if f["role"] != "baseline":
                continue
            for fam, g in f["families"].items():
                if g["status"] == "ok":
                    per.setdefault((name, fam), []).append((b["budget"], g["opt_params"]))
    laws = {}
    for (name, fam), pts in per.items():
        law = _power_law(pts)
        if law is not None and fam not in laws:
            laws[fam] = (*law, len(pts), name)
    kinds = {name: f["role"] for b in v["budgets"] for name, f in b["fits"].items()}
    front = next(((f["params"]["coef"], f["params"]["exponent"], f["n_budgets"], name)
                  for name, f in v["frontier"].items() if f["status"] == "ok" and kinds.get(name) == "baseline"),
                 None)
    return laws, front


def estimator(spec: ExperimentSpec, results: Path | None, fam: str, candidates: list[ModelConfig]):
    """(budget -> estimated optimal N_f of this family, a description of the method)."""
    laws, front = _results_laws(results)
    law = laws.get(fam)
    if law is None and front is None:
        return chinchilla_nopt, f"Chinchilla, {TOKENS_PER_PARAM} tokens per FLOP-counted parameter"
    A, a, n, name = law or front
    method = (f"optima of {name}'s family {fam} at {n} budgets in {results}" if law else
              f"frontier of {name} fitted from {n} budgets in {results}")
    # the fits are in total params; map them to N_f through this family's own sizes
    sizes = sorted((F.param_counts(_arch(m, spec))["total"], flop_params(m, spec)) for m in candidates)

    def est(budget: float) -> float:
        target = A * budget ** a
        return min(sizes, key=lambda s: abs(math.log(s[0] / target)))[1]
    return est, method


# ---------------------------------------------------------------- what plan accepts


def plannable(spec: ExperimentSpec, model: ModelConfig, budget: float, variants: list[str]) -> bool:
    """Whether `plan` plans this size at this budget with these variants (the ones that route
    a layer of it; the planner skips the others), by planning it alone."""
    keep = [v for v in variants if not routes_no_layer(spec, model, v)]
    if not keep:
        return False
    raw = spec_to_dict(spec)
    raw |= {"models": [model.model_dump(mode="json")], "budgets": [budget],
            "variants": {v: raw["variants"][v] for v in keep}}
    try:
        build_plan(parse_spec(raw))
    except SpecError:
        return False
    return True


# ---------------------------------------------------------------- suggestion and warnings


def suggest_grid(spec: ExperimentSpec, results: Path | None = None) -> tuple[str, str]:
    """(YAML with `models` and per-budget `budgets` to paste, the estimation method)."""
    chosen: dict[float, list[ModelConfig]] = {b: [] for b, _ in spec.grids()}
    notes, methods, used = [], {}, {}
    for fam, models in families(spec).items():
        cands = sorted(ladder(models), key=lambda m: flop_params(m, spec))
        est, methods[fam] = estimator(spec, results, fam, cands)
        for i, (budget, _) in enumerate(spec.grids()):
            ok = [m for m in cands if plannable(spec, m, budget, spec.variants_at(i))]
            if not ok:
                small = budget < flop_params(cands[0], spec) * 6 * spec.data.seq_len * spec.batch_size(cands[0])
                why = ("one step of the smallest exceeds it" if small else
                       f"the largest would take more than the data sampler's {STEP_LIMIT:,} steps")
                notes.append(f"# budget {budget_tag(budget)}, family {fam}: no ladder size can be "
                             f"planned at this budget ({why})")
                continue
            nf = [flop_params(m, spec) for m in ok]
            j = min(range(len(ok)), key=lambda k: abs(math.log(nf[k] / est(budget))))
            lo = max(0, min(j - SIDE, len(ok) - 2 * SIDE - 1))
            pick = ok[lo:lo + 2 * SIDE + 1]
            if not nf[lo] < est(budget) < nf[min(lo + 2 * SIDE, len(ok) - 1)]:
                notes.append(f"# budget {budget_tag(budget)}, family {fam}: the sizes plan accepts "
                             f"({_k(nf[0])}..{_k(nf[-1])} FLOP-counted params) do not bracket the "
                             f"estimate {_k(est(budget))}")
            chosen[budget] += pick
            used.update({m.name: m for m in pick})
    budgets = [{"flops": float(b), "models": list(dict.fromkeys(m.name for m in ms))}
               for b, ms in chosen.items() if ms]
    models = [_model_yaml(m) for m in sorted(used.values(), key=lambda m: (m.n_layers, flop_params(m, spec)))]
    method = (next(iter(methods.values())) if len(set(methods.values())) == 1
              else "; ".join(f"family {f}: {m}" for f, m in methods.items()))
    text = yaml.dump({"budgets": budgets, "models": models}, Dumper=_Dumper, sort_keys=False,
                     default_flow_style=None, width=100)
    head = f"# sizes bracketing the estimated optimum per budget and family ({method})\n"
    return head + "".join(n + "\n" for n in notes) + text, method


def _model_yaml(m: ModelConfig) -> dict:
    out = {"name": m.name, "n_layers": m.n_layers, "d_model": m.d_model, "n_heads": m.n_heads}
    return out | {k: getattr(m, k) for k in KEEP if k in m.model_fields_set}


class _Dumper(yaml.SafeDumper):
    """Budgets as 1e12, not 1000000000000.0 (the loader reads 1e12 as the spec files do)."""


# a plain 1e12 (YAML 1.1 reads it as a string, which the spec turns into a float, as in
# every shipped spec)
_Dumper.add_representer(float, lambda d, v: d.represent_scalar("tag:yaml.org,2002:str", budget_tag(v)))


def plan_file(path, results: Path | None = None, overrides=(),
              target: Target = Target()) -> tuple[ExperimentSpec, Plan]:
    """Load, validate and plan a spec file with its `--set` overrides (what `modexp plan`
    calls), its memory estimates for `target`; with a results root, warn per budget and family
    where the grid does not bracket the estimated optimum."""
    spec, plan = plan_spec_file(path, overrides, target)
    if results is not None:
        plan.warnings += bracket_warnings(spec, Path(results) / spec.name)
    return spec, plan


def suggest_grid_file(path, results: Path | None = None) -> str:
    """The --suggest-grid YAML for a spec file (results: its results folder, if any), planned
    with its data source's vocabulary (a prepared folder's meta.json gives it)."""
    spec, _ = plan_spec_file(path)
    return suggest_grid(spec, _results_dir(spec, results))[0]


def _results_dir(spec: ExperimentSpec, results: Path | None) -> Path | None:
    return None if results is None else Path(results) / spec.name


def bracket_warnings(spec: ExperimentSpec, results: Path | None = None) -> list[str]:
    """One line per budget and family whose grid does not bracket the family's estimate."""
    out = []
    fams = families(spec)
    for fam, models in fams.items():
        est, method = estimator(spec, results, fam, ladder(models))
        for i, (budget, grid) in enumerate(spec.grids()):
            nf = sorted(flop_params(m, spec) for m in grid if m.family_name == fam)
            if not nf:
                continue
            target = est(budget)
            if not nf[0] < target < nf[-1]:
                which = f" of family {fam}" if len(fams) > 1 else ""
                out.append(f"budgets[{i}]: the grid{which} ({_k(nf[0])}..{_k(nf[-1])} FLOP-counted "
                           f"params) does not bracket the estimated compute-optimal size {_k(target)} "
                           f"({method}); `modexp plan SPEC --suggest-grid` proposes one")
    return out


def _k(n: float) -> str:
    for div, suf in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= div:
            return f"{n / div:.3g}{suf}"
    return f"{n:.3g}"
