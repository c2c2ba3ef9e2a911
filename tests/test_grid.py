"""`modexp plan --suggest-grid` and the bracket warning (modexp/grid.py)."""

import subprocess
import sys

import yaml
from typer.testing import CliRunner

from modexp.cli import app
from modexp.grid import bracket_warnings, chinchilla_nopt, flop_params, suggest_grid
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
