"""Grid suggestion: model sizes that bracket each budget's estimated compute-optimal size.

The estimate (no torch, no training):
- from the results folder when its fits have interior optima at >= 2 budgets: the fitted
  frontier N_opt(C) = A C^a of the vanilla variant (verdict.frontier, Hoffmann approach 2);
- else Chinchilla's rule of about 20 training tokens per parameter (Hoffmann et al. 2022),
  with parameters counted the way the FLOP convention counts them: N_f = training FLOPs per
  token / 6, so that C = 6 N_f D and D = 20 N_f give N_f = sqrt(C / 120). At tiny scale the
  embedding table is most of the parameters but costs no FLOPs, so total parameters would
  put the estimate far off.
Sizes come from a ladder of shapes about 1.5-2x apart in N_f; the suggestion is the ladder
size nearest the estimate and two on each side, printed as YAML to paste into a spec.
"""

from __future__ import annotations

import math
from pathlib import Path

import yaml

from modexp import flops as F
from modexp.naming import budget_tag
from modexp.spec import ExperimentSpec, ModelConfig, VanillaVariant, load_spec

TOKENS_PER_PARAM = 20  # Chinchilla (Hoffmann et al. 2022, table 3)
SIDE = 2  # ladder sizes suggested on each side of the estimate


def ladder() -> list[ModelConfig]:
    """Shapes from 2 layers at width 16 up to 24 layers at width 2048: depth grows with width."""
    out = []
    for d in (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048):
        for layers in sorted({2, max(2, min(24, d // 32)), max(2, min(24, 3 * d // 64))}):
            heads = max(2, d // 64)
            out.append(ModelConfig(name=f"d{d}L{layers}", n_layers=layers, d_model=d, n_heads=heads))
    return out


def flop_params(model: ModelConfig, spec: ExperimentSpec) -> float:
    """Parameters as the FLOP convention counts them: vanilla training FLOPs per token / 6."""
    arch = F.arch_from_config(model, VanillaVariant(kind="vanilla"), spec.data.vocab)
    T = spec.data.seq_len
    return F.train_flops(arch, T, spec.flops.convention) / T / 6


def chinchilla_nopt(budget: float) -> float:
    """N_f with D = 20 N_f and C = 6 N_f D."""
    return math.sqrt(budget / (6 * TOKENS_PER_PARAM))


def estimator(spec: ExperimentSpec, results: Path | None):
    """(budget -> estimated optimal N_f, a description of the method)."""
    front = _frontier(results) if results is not None else None
    if front is None:
        return chinchilla_nopt, f"Chinchilla, {TOKENS_PER_PARAM} tokens per FLOP-counted parameter"
    A, a, n, name = front
    # the frontier is in total params; map it to N_f through the ladder's params <-> N_f
    sizes = sorted(((F.param_counts(_arch(m, spec))["total"], flop_params(m, spec)) for m in ladder()))

    def est(budget: float) -> float:
        target = A * budget ** a
        return min(sizes, key=lambda s: abs(math.log(s[0] / target)))[1]
    return est, f"frontier of {name} fitted from {n} budgets in {results}"


def _arch(model: ModelConfig, spec: ExperimentSpec):
    return F.arch_from_config(model, VanillaVariant(kind="vanilla"), spec.data.vocab)


def _frontier(results: Path):
    """(A, a, n_budgets, variant) of the first vanilla frontier with status ok, else None."""
    if not results.is_dir():
        return None
    from modexp.analysis.verdict import verdict_json
    from modexp.spec import SpecError

    try:
        v = verdict_json(results)
    except SpecError:
        return None
    kinds = {name: f["kind"] for b in v["budgets"] for name, f in b["fits"].items()}
    for name, f in v["frontier"].items():
        if f["status"] == "ok" and kinds.get(name) == "vanilla":
            return f["params"]["coef"], f["params"]["exponent"], f["n_budgets"], name
    return None


def suggest_grid(spec: ExperimentSpec, results: Path | None = None) -> tuple[str, str]:
    """(YAML with `models` and per-budget `budgets` to paste, the estimation method)."""
    est, method = estimator(spec, results)
    sizes = sorted(ladder(), key=lambda m: flop_params(m, spec))
    nf = [flop_params(m, spec) for m in sizes]
    budgets, used = [], {}
    for budget, _ in spec.grids():
        i = min(range(len(sizes)), key=lambda j: abs(math.log(nf[j] / est(budget))))
        lo = max(0, min(i - SIDE, len(sizes) - 2 * SIDE - 1))  # 5 sizes, also at the ladder's ends
        chosen = sizes[lo:lo + 2 * SIDE + 1]
        used.update({m.name: m for m in chosen})
        budgets.append({"flops": float(budget), "models": [m.name for m in chosen]})
    models = [{"name": m.name, "n_layers": m.n_layers, "d_model": m.d_model, "n_heads": m.n_heads}
              for m in sorted(used.values(), key=lambda m: flop_params(m, spec))]
    text = yaml.dump({"budgets": budgets, "models": models}, Dumper=_Dumper, sort_keys=False,
                     default_flow_style=None, width=100)
    return f"# sizes bracketing the estimated optimum per budget ({method})\n{text}", method


class _Dumper(yaml.SafeDumper):
    """Budgets as 1e12, not 1000000000000.0 (the loader reads 1e12 as the spec files do)."""


# a plain 1e12 (YAML 1.1 reads it as a string, which the spec turns into a float, as in
# every shipped spec)
_Dumper.add_representer(float, lambda d, v: d.represent_scalar("tag:yaml.org,2002:str", budget_tag(v)))


def suggest_grid_file(path, results: Path | None = None) -> str:
    """The --suggest-grid YAML for a spec file (results: its results folder, if any)."""
    spec = load_spec(path)
    return suggest_grid(spec, _results_dir(spec, results))[0]


def _results_dir(spec: ExperimentSpec, results: Path | None) -> Path | None:
    return None if results is None else Path(results) / spec.name


def bracket_warnings(spec: ExperimentSpec, results: Path | None = None) -> list[str]:
    """One line per budget whose grid does not bracket its estimated optimum."""
    est, method = estimator(spec, results)
    out = []
    for i, (budget, models) in enumerate(spec.grids()):
        nf = sorted(flop_params(m, spec) for m in models)
        target = est(budget)
        if not nf[0] < target < nf[-1]:
            out.append(f"budgets[{i}]: the grid ({_k(nf[0])}..{_k(nf[-1])} FLOP-counted params) "
                       f"does not bracket the estimated compute-optimal size {_k(target)} "
                       f"({method}); `modexp plan SPEC --suggest-grid` proposes one")
    return out


def _k(n: float) -> str:
    for div, suf in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= div:
            return f"{n / div:.3g}{suf}"
    return f"{n:.3g}"
