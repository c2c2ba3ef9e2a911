"""Shape families in the plan: every entry records its family and depth (the analysis needs
no spec to group runs), and a MoD variant is not planned on a model it routes no layer of."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from modexp.cli import app
from modexp.plan import build_plan
from modexp.spec import SpecError, parse_spec

from conftest import TINY


def test_plan_entries_carry_family_and_depth():
    spec = dict(TINY, models=[{"name": "a", "n_layers": 2, "d_model": 16, "n_heads": 2},
                              {"name": "b", "n_layers": 2, "d_model": 32, "n_heads": 2, "family": "d16xL"}])
    runs = build_plan(parse_spec(spec)).runs
    assert {(r.model, r.family, r.n_layers) for r in runs} == {("a", "L2", 2), ("b", "d16xL", 2)}
    assert runs[0].to_dict()["family"] == "L2"


def test_a_family_name_is_checked():
    with pytest.raises(SpecError) as e:
        parse_spec(dict(TINY, models=[{"name": "a", "n_layers": 2, "d_model": 16, "n_heads": 2,
                                       "family": "two words"}]))
    assert any("family" in p for p in e.value.problems)


def test_mod_is_not_planned_where_it_routes_no_layer():
    spec = dict(TINY, budgets=[2e9, 4e9], seeds=[0, 1],
                models=[{"name": "one", "n_layers": 1, "d_model": 16, "n_heads": 2},
                        {"name": "two", "n_layers": 2, "d_model": 16, "n_heads": 2}])
    plan = build_plan(parse_spec(spec))
    assert {(r.variant, r.model) for r in plan.runs} == {("vanilla", "one"), ("vanilla", "two"), ("mod", "two")}
    skipped = [w for w in plan.warnings if "not planned" in w]
    assert skipped == ["variant mod is not planned on model(s) one: its routing pattern routes none "
                       "of their layers (each would be a vanilla model)"]  # once, for 2 budgets x 2 seeds


def test_a_variant_left_with_nothing_is_refused(write_spec):
    path = write_spec(models=[{"name": "one", "n_layers": 1, "d_model": 16, "n_heads": 2}])
    res = CliRunner().invoke(app, ["plan", str(path)])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "variants.mod: routes no layer of any model it is planned on (one)" in res.stderr


