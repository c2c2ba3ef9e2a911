"""`modexp plan --suggest-grid` and the bracket warning (modexp/grid.py)."""

import subprocess
import sys

import pytest
import yaml
from typer.testing import CliRunner

from modexp.cli import app
from modexp.grid import (bracket_warnings, chinchilla_nopt, families, flop_params, ladder, plannable,
                         suggest_grid)
from modexp.spec import parse_spec

from conftest import TINY

runner = CliRunner()


def test_suggested_grid_pastes_into_a_spec_that_brackets_every_budget(write_spec):
    spec = parse_spec(dict(TINY, budgets=[1e11, 1e12, 1e13]))
    text, method = suggest_grid(spec)
    assert "Chinchilla" in method
    pasted = parse_spec(dict(TINY, **yaml.safe_load(text)))  # a valid spec as printed
    assert bracket_warnings(pasted) == []
    for budget, models in pasted.grids():
        nf = sorted(flop_params(m, pasted) for m in models)
        assert len(nf) == 5 and nf[0] < chinchilla_nopt(budget) < nf[-1]


def test_plan_warns_on_stderr_when_a_grid_misses_its_estimate(write_spec, tmp_path):
    path = write_spec(dict(TINY, budgets=[1e14]))  # the 2-layer width-32 model is far too small
    res = runner.invoke(app, ["plan", str(path), "--results", str(tmp_path)])
    assert res.exit_code == 0
    assert "budgets[0]: the grid" in res.stderr and "does not bracket" in res.stderr
    assert "does not bracket" not in res.stdout
    out = runner.invoke(app, ["plan", str(path), "--suggest-grid"])
    assert out.exit_code == 0 and yaml.safe_load(out.stdout)["budgets"][0]["flops"] == "1e14"


def test_frontier_from_finished_runs_replaces_chinchilla(tmp_path):
    from test_verdict import sweep

    sweep(tmp_path / "synthetic", seeds=(0,))
    spec = parse_spec(dict(TINY, name="synthetic", budgets=[2e10, 8e10]))
    text, method = suggest_grid(spec, tmp_path / "synthetic")
    assert method.startswith("frontier of vanilla fitted from 2 budgets")
    assert yaml.safe_load(text)["budgets"][0]["models"]


def test_plan_and_suggest_grid_import_no_torch(write_spec):
    path = write_spec()
    code = ("import sys; from modexp.cli import app; from typer.testing import CliRunner; "
            f"r = CliRunner().invoke(app, ['plan', {str(path)!r}, '--suggest-grid']); "
            f"r2 = CliRunner().invoke(app, ['plan', {str(path)!r}]); "
            "assert r.exit_code == r2.exit_code == 0; assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------- families


def two_depths(**kw) -> dict:
    models = [{"name": "one", "n_layers": 1, "d_model": 32, "n_heads": 2},
              {"name": "two", "n_layers": 2, "d_model": 32, "n_heads": 2, "mlp": "swiglu"}]
    return {**TINY, "models": models, "variants": {"vanilla": {"kind": "vanilla"}}, **kw}


def test_a_suggestion_per_family_that_brackets_each():
    spec = parse_spec(two_depths(budgets=[1e11, 1e12]))
    text, _ = suggest_grid(spec)
    got = yaml.safe_load(text)
    by_name = {m["name"]: m for m in got["models"]}
    assert {m["n_layers"] for m in got["models"]} == {1, 2}
    assert all(m.get("mlp") == "swiglu" for m in got["models"] if m["n_layers"] == 2)  # the family's settings
    pasted = parse_spec(dict(two_depths(), **got))
    assert bracket_warnings(pasted) == []
    for budget, models in pasted.grids():
        for depth in (1, 2):
            nf = sorted(flop_params(m, pasted) for m in models if m.n_layers == depth)
            assert len(nf) == 5 and nf[0] < chinchilla_nopt(budget) < nf[-1]
    assert all(by_name[n]["n_layers"] in (1, 2) for b in got["budgets"] for n in b["models"])


def test_bracket_warnings_name_the_family_that_misses():
    models = [*[{"name": f"one{d}", "n_layers": 1, "d_model": d, "n_heads": 2} for d in (8, 12)],
              *[{"name": f"two{d}", "n_layers": 2, "d_model": d, "n_heads": 2} for d in (16, 64, 256)]]
    warns = bracket_warnings(parse_spec(two_depths(models=models, budgets=[1e11])))
    assert len(warns) == 1 and warns[0].startswith("budgets[0]: the grid of family L1 (")


@pytest.mark.parametrize("budgets", [[3e7, 1e11], [1e19]])
def test_suggest_grid_never_proposes_sizes_plan_refuses(budgets):
    """At a tiny budget the smallest ladder sizes take more than the budget in one step; at a
    huge one the ladder ends below the estimate (1e19: above ~1e20 the sampler's step limit
    refuses every size of this spec's ladder): whatever is printed plans as it stands."""
    from modexp.plan import build_plan

    spec = parse_spec(two_depths(budgets=budgets, variants=TINY["variants"]))
    text, _ = suggest_grid(spec)
    got = yaml.safe_load(text)
    pasted = parse_spec(dict(two_depths(variants=TINY["variants"]), **got))
    plan = build_plan(pasted)  # raises SpecError on a size one step of which exceeds its budget
    assert {r.model for r in plan.runs} == {m["name"] for m in got["models"]}
    if budgets[0] < 1e8:  # one step of L2d32 is more than 3e7 FLOPs: it would be the 5th size
        tiny = [n for n in got["budgets"][0]["models"] if n.startswith("L2")]
        assert tiny == ["L2d8", "L2d12", "L2d16", "L2d24"] and all(r.steps >= 1 for r in plan.runs)
        assert not plannable(spec, next(m for m in ladder(families(spec)["L2"]) if m.d_model == 32),
                             3e7, ["vanilla", "mod"])
    else:
        assert "do not bracket the estimate" in text  # said, not hidden


def test_a_budget_no_size_fits_is_left_out_with_a_note():
    spec = parse_spec(two_depths(budgets=[1e3, 1e11]))
    text, _ = suggest_grid(spec)
    assert [b["flops"] for b in yaml.safe_load(text)["budgets"]] == ["1e11"]
    assert "# budget 1e3, family L1: no ladder size can be planned at this budget" in text


def test_a_budget_past_the_step_limit_says_so():
    text, _ = suggest_grid(parse_spec(two_depths(budgets=[1e21, 1e11])))
    assert "# budget 1e21, family L2: no ladder size can be planned at this budget (the largest " \
           "would take more than the data sampler's 4,294,967,296 steps)" in text


def test_a_family_of_mixed_depths_keeps_its_own_sizes():
    models = [{"name": f"r{L}", "n_layers": L, "d_model": 16 * L, "n_heads": 2, "family": "d16xL"}
              for L in (1, 2, 3, 4, 6, 8)]
    text, _ = suggest_grid(parse_spec(dict(TINY, models=models, budgets=[1e11])))
    names = [m["name"] for m in yaml.safe_load(text)["models"]]
    assert set(names) <= {m["name"] for m in models} and len(names) == 5


def test_a_family_with_finished_optima_uses_its_own(tmp_path):
    from test_verdict import sweep

    sweep(tmp_path / "synthetic", seeds=(0,))  # 4-layer models: family L4
    models = [{"name": "deep", "n_layers": 4, "d_model": 32, "n_heads": 2},
              {"name": "flat", "n_layers": 2, "d_model": 32, "n_heads": 2}]
    spec = parse_spec(dict(TINY, name="synthetic", budgets=[2e10, 8e10], models=models))
    text, method = suggest_grid(spec, tmp_path / "synthetic")
    assert method.startswith("family L2: frontier of vanilla fitted from 2 budgets")
    assert "family L4: optima of vanilla's family L4 at 2 budgets" in method
