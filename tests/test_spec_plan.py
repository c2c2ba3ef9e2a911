"""Spec validation, the planner, and `modexp plan` (bad input: exit 2, field named)."""

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from modexp.cli import app
from modexp.naming import budget_tag
from modexp.plan import build_plan, eval_steps, plan_file, routes_no_layer
from modexp.spec import SpecError, load_spec, parse_spec

from conftest import TINY

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()


@pytest.mark.parametrize("path", sorted((ROOT / "experiments").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_spec_loads_and_plans(path):
    spec, plan = plan_file(path)
    # every (model, variant) a budget trains (variant_families), but a MoD variant on a model it
    # routes no layer of (the planner skips it with a warning)
    runs = sum(1 for i, (_, models) in enumerate(spec.grids()) for m in models
               for v in spec.variants_at(i)
               if spec.trains(i, m, v) and not routes_no_layer(spec, m, v))
    assert len(plan.runs) == runs * len(spec.seeds)
    for r in plan.runs:
        assert abs(r.total_flops - r.budget) <= r.flops_per_step / 2
        assert r.steps >= 1


def test_residual_bound_and_same_budget_for_every_run():
    spec = parse_spec(dict(TINY, budgets=[1e10, 3.3e10]))
    plan = build_plan(spec)
    for r in plan.runs:
        assert r.steps == round(r.budget / r.flops_per_step)
        assert abs(r.residual) <= r.flops_per_step / 2
        assert r.total_flops == r.steps * r.flops_per_step
    mod = next(r for r in plan.runs if r.kind == "mod" and r.budget == 1e10)
    van = next(r for r in plan.runs if r.kind == "vanilla" and r.budget == 1e10)
    assert mod.steps > van.steps  # cheaper steps, more of them, same FLOPs
    assert mod.fwd_ratio_vs_vanilla < 1 and van.fwd_ratio_vs_vanilla == 1


def test_variant_families_train_a_variant_on_the_named_families_only():
    models = [{"name": "a", "n_layers": 2, "d_model": 32, "n_heads": 2},
              {"name": "b", "n_layers": 4, "d_model": 32, "n_heads": 2}]
    budgets = [{"flops": 2e9, "models": ["a", "b"], "variant_families": {"mod": ["L4"]}}, 4e9]
    plan = build_plan(parse_spec(dict(TINY, models=models, budgets=budgets)))
    trained = {(r.budget, r.model, r.variant) for r in plan.runs}
    assert trained == {(2e9, "a", "vanilla"), (2e9, "b", "vanilla"), (2e9, "b", "mod"),
                       (4e9, "a", "vanilla"), (4e9, "b", "vanilla"), (4e9, "a", "mod"),
                       (4e9, "b", "mod")}


@pytest.mark.parametrize("only, problem", [
    ({"nope": ["L4"]}, "budgets[0].variant_families.nope: unknown variant 'nope'"),
    ({"mod": ["L3"]}, "budgets[0].variant_families.mod: unknown family 'L3' (allowed: "
                      "families of this budget's models: L2, L4)"),
    ({"mod": []}, "budgets[0].variant_families.mod: unknown family (none given)"),
])
def test_variant_families_name_known_variants_and_families(only, problem):
    models = [{"name": "a", "n_layers": 2, "d_model": 32, "n_heads": 2},
              {"name": "b", "n_layers": 4, "d_model": 32, "n_heads": 2}]
    with pytest.raises(SpecError) as e:
        parse_spec(dict(TINY, models=models,
                        budgets=[{"flops": 2e9, "models": ["a", "b"], "variant_families": only}]))
    assert any(problem in p for p in e.value.problems), e.value.problems


def test_eval_points_are_budget_fractions():
    assert eval_steps(100, 4) == [25, 50, 75, 100]
    assert eval_steps(3, 10) == [1, 2, 3]


def test_run_ids_are_stable_and_readable():
    assert budget_tag(3e12) == "3e12" and budget_tag(1.5e19) == "1.5e19"
    ids = [r.run_id for r in build_plan(parse_spec(TINY)).runs]
    assert ids == ["2e9-xs-vanilla-s0", "2e9-xs-mod-s0"]


def test_budget_tags_parse_back_to_their_budget():
    """Distinct budgets, distinct tags (issue 27: [2e8, 2.0000001e8] shared '2e8'), and every
    budget of up to six significant digits keeps the tag it had."""
    assert budget_tag(2e8) == "2e8" and budget_tag(2.0000001e8) == "2.0000001e8"
    assert budget_tag(1.23456e12) == "1.23456e12" and budget_tag(3.3e10) == "3.3e10"
    rng = random.Random(0)
    for _ in range(5000):
        b = rng.random() * 10 ** rng.randint(-3, 24)
        assert float(budget_tag(b)) == b


def test_budget_below_one_step_refused(write_spec):
    result = runner.invoke(app, ["plan", str(write_spec(budgets=[1e3]))])
    assert result.exit_code == 2
    assert "budgets[0]" in result.output and "less than one training step" in result.output


def test_epochs_warning_when_data_repeats(write_spec, tmp_path):
    corpus = tmp_path / "small.txt"
    corpus.write_text("x" * 1000)
    result = runner.invoke(app, ["plan", str(write_spec(data={"source": str(corpus), "seq_len": 32}))])
    assert result.exit_code == 0, result.output
    assert "epochs" in result.output


def test_plan_json_keys(write_spec):
    result = runner.invoke(app, ["plan", str(write_spec()), "--json"])
    assert result.exit_code == 0, result.output
    runs = json.loads(result.stdout)
    need = {"run_id", "variant", "model", "seed", "budget", "params", "flops_per_step", "steps",
            "tokens", "total_flops", "convention"}
    assert all(need <= set(r) for r in runs)


BAD = {
    "unknown key": ({"modles": []}, "modles: unknown key (did you mean 'models'?)"),
    "misspelt nested key": ({"train": {"bach_size": 3}}, "train.bach_size: unknown key (did you mean 'batch_size'?)"),
    "wrong type": ({"seeds": "zero"}, "seeds:"),
    "capacity above 1": ({"variants": {"m": {"kind": "mod", "capacity": 1.5}}}, "variants.m.capacity"),
    "capacity zero": ({"variants": {"m": {"kind": "mod", "capacity": 0}}}, "variants.m.capacity"),
    "heads do not divide": ({"models": [{"name": "a", "n_layers": 2, "d_model": 30, "n_heads": 4}]},
                            "models[0].n_heads: must divide d_model"),
    "negative budget": ({"budgets": [-1e12]}, "budgets[0]: Input should be greater than 0"),
    "empty variants": ({"variants": {}}, "variants:"),
    "unknown variant kind": ({"variants": {"v": {"kind": "moe"}}}, "variants.v: kind must be 'vanilla' or 'mod'"),
    "layer out of range": ({"variants": {"m": {"kind": "mod", "layers": {7: 0.5}}}},
                           "variants.m.layers: layer 7 does not exist"),
    "final eval not a superset": ({"train": {"batch_size": 4, "eval_batches": 2, "final_eval_batches": 3}},
                                  "train.final_eval_batches: must be a multiple of eval_batches (2), got 3"),
}


@pytest.mark.parametrize("eval_batches, final", [(1, 4), (2, 4), (3, 6), (8, 8)])
def test_final_eval_batches_default_is_the_smallest_multiple_of_at_least_4(write_spec, eval_batches, final):
    spec = load_spec(write_spec(train={"batch_size": 4, "eval_batches": eval_batches}))
    assert spec.train.final_eval_batches == final


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_bad_input_exit_2_names_field(case, write_spec, tmp_path):
    change, expected = BAD[case]
    path = write_spec(**change)
    before = sorted(tmp_path.rglob("*"))
    result = runner.invoke(app, ["plan", str(path)])
    assert result.exit_code == 2, result.output
    assert expected in result.output and str(path) in result.output
    assert "Traceback" not in result.output
    assert sorted(tmp_path.rglob("*")) == before  # nothing written


def test_every_problem_reported_at_once(write_spec):
    path = write_spec(budgets=[-1], train={"bach_size": 3}, seeds="x")
    with pytest.raises(SpecError) as e:
        load_spec(path)
    assert len(e.value.problems) == 3


def test_missing_file_and_yaml_syntax_error(tmp_path):
    result = runner.invoke(app, ["plan", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2 and "file not found" in result.output
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: x\nbudgets: [1e12\nmodels: {")
    result = runner.invoke(app, ["plan", str(broken)])
    assert result.exit_code == 2 and "YAML syntax error" in result.output and "line" in result.output


def test_plan_does_not_import_torch():
    code = ("import sys; from modexp.plan import plan_file; from modexp.cli import app; "
            f"plan_file({str(ROOT / 'experiments' / 'quickstart.yaml')!r}); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
