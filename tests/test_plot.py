"""`modexp plot`: synthetic results folders written by the real run-file writers, known losses."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from modexp.analysis import isoflop as A
from modexp.analysis.plot import PlotReport, plot_results, print_report
from modexp.analysis.verdict import verdict_dict
from modexp.plan import build_plan
from modexp.runs.metrics import SUMMARY_FILE, MetricsWriter, write_json_atomic
from modexp.spec import SpecError, parse_spec, spec_to_dict

WIDTHS = (32, 48, 64, 96, 128)  # five sizes: enough for a parabola with slack
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def spec_dict(widths=WIDTHS, budgets=(2e10,), seeds=(0,), variants=None) -> dict:
    return {"name": "synthetic", "seeds": list(seeds), "data": {"seq_len": 32},
            "budgets": list(budgets),
            "models": [{"name": f"w{w}", "n_layers": 4, "d_model": w, "n_heads": 2} for w in widths],
            "variants": variants or {"vanilla": {"kind": "vanilla"},
                                     "mod": {"kind": "mod", "capacity": 0.25, "route_every": 2}},
            "train": {"batch_size": 4, "eval_points": 5, "log_every": 2}}


def parabola(opt_params: float, floor: float, curv: float = 0.8):
    """Loss exactly quadratic in log10(params) with its minimum at opt_params."""
    return lambda p: floor + curv * (math.log10(p) - math.log10(opt_params)) ** 2


def write_run(root: Path, plan, spec: dict, final: float, *, upto: float = 1.0, state="done",
              seed_noise: float = 0.0) -> None:
    """One run as the trainer writes it; the loss curve ends exactly at `final`."""
    d = root / plan.run_id
    write_json_atomic(d / "run.json", {"plan": plan.to_dict(), "spec": spec, "data": {}})
    w, mod = MetricsWriter(d), plan.kind == "mod"
    n_routed = sum(c is not None for c in plan.capacities)
    last = max(1, int(plan.steps * upto))
    rng = np.random.default_rng(plan.seed)
    curve = lambda s: final + seed_noise + 2.5 * (1 - s / plan.steps) ** 3
    for s in range(2, last + 1, 2):
        w.log({"kind": "train", "step": s, "tokens": s * plan.batch_size * plan.seq_len,
               "flops": s * plan.flops_per_step, "train_loss": curve(s) + 0.05 + rng.normal(0, 0.05),
               "lm_loss": curve(s) + rng.normal(0, 0.05), "aux_loss": 0.05 if mod else None,
               "predictor_loss": None, "lr": 1e-3, "grad_norm": 1.0,
               "routed_frac": [0.25] * n_routed, "wall_time": s * 0.1, "tokens_per_s": 1e4})
    n_eval = len(plan.eval_steps)
    for s in (e for e in plan.eval_steps if e <= last):
        row = {"kind": "eval", "step": s, "tokens": s * plan.batch_size * plan.seq_len,
               "flops": s * plan.flops_per_step, "eval_loss": curve(s),
               "budget_frac": round(s * n_eval / plan.steps) / n_eval}  # nominal, as the trainer's
        if mod:
            row |= {"eval_loss_causal": curve(s) + 0.03, "predictor_acc": 0.8 + 0.15 * s / plan.steps,
                    "predictor_precision": 0.7, "predictor_recall": 0.6,
                    "routed_frac_causal": [0.22 + 0.02 * i for i in range(n_routed)]}
        w.log(row)
    if upto >= 1 or state == "failed":
        write_json_atomic(d / SUMMARY_FILE, {
            "state": state, "final_eval_loss": final + seed_noise if state == "done" else None,
            "final_eval_loss_causal": final + seed_noise + 0.03 if mod and state == "done" else None,
            "predictor_acc": 0.95 if mod else None, "routed_frac_causal": None, "wall_time": 10.0,
            "tokens_per_s": 1e4, "peak_mem_bytes": 0, "step": last,
            **({"error": "loss is not finite (NaN/inf) by step 7"} if state == "failed" else {})})


def make_results(root: Path, spec: dict | None = None, losses=None, skip=(), partial=(), failed=(),
                 noise=None, plan_file=True):
    """A results folder; losses[variant](params) gives each run's final eval loss."""
    spec = spec or spec_dict()
    resolved = spec_to_dict(parse_spec(spec))
    runs = build_plan(parse_spec(spec)).runs
    losses = losses or {"vanilla": parabola(1.5e5, 3.0), "mod": parabola(2.5e5, 2.95)}
    if plan_file:
        write_json_atomic(root / "plan.json", {"experiment": spec["name"], "spec": resolved,
                                               "runs": [r.to_dict() for r in runs]})
    for r in runs:
        if r.run_id in skip:
            continue
        write_run(root, r, resolved, losses[r.variant](r.params), upto=0.4 if r.run_id in partial else 1.0,
                  state="failed" if r.run_id in failed else "done",
                  seed_noise=(noise or {}).get(r.seed, 0.0))
    return runs


def is_png(p: Path) -> bool:
    return p.stat().st_size > 1000 and p.read_bytes()[:8] == PNG_MAGIC


def opt_row(table, budget=2e10):
    return table[(table.budget == budget) & (table.model == "isoFLOP optimum")].iloc[0]


# ---------------------------------------------------------------- figures and table


def test_figures_table_and_files(tmp_path):
    runs = make_results(tmp_path)
    rep = plot_results(tmp_path)
    names = sorted(p.name for p in rep.figures)
    assert names == ["isoflop.png", "loss_vs_flops.png", "loss_vs_time.png", "mod_routing.png",
                     "routing_heatmap.png"]
    assert all(p.parent == tmp_path / "plots" and is_png(p) for p in rep.figures)
    assert rep.csv.read_text().startswith("budget,model,") and "| model |" in rep.markdown.read_text()
    assert rep.missing == [] and rep.warnings == []
    t = rep.table.set_index("model")
    truth = {"vanilla": parabola(1.5e5, 3.0), "mod": parabola(2.5e5, 2.95)}
    for r in runs:  # table values are exactly the final losses written
        assert t.at[r.model, f"{r.variant} loss"] == truth[r.variant](r.params)
        assert t.at[r.model, f"{r.variant} params"] == r.params and t.at[r.model, f"{r.variant} n"] == 1


def test_mod_vs_vanilla_percent_and_forward_ratio(tmp_path):
    runs = make_results(tmp_path, losses={"vanilla": lambda p: 3.0, "mod": lambda p: 2.94})
    t = A.analyze(tmp_path).table.set_index("model")
    assert t.at["w64", "mod vs vanilla %"] == pytest.approx(-2.0)
    fwd = {(r.model, r.variant): r.forward_flops_per_token for r in runs}
    assert t.at["w64", "mod/vanilla fwd FLOPs"] == pytest.approx(fwd["w64", "mod"] / fwd["w64", "vanilla"])
    assert t.at["w64", "mod/vanilla fwd FLOPs"] < 1
    assert t.at["w64", "mod causal loss"] == pytest.approx(2.97)


def test_several_variants_of_each_kind(tmp_path):
    variants = {"dense": {"kind": "vanilla"}, "dense2": {"kind": "vanilla"},
                "mod12": {"kind": "mod", "capacity": 0.125}, "mod50": {"kind": "mod", "capacity": 0.5}}
    flat = {"dense": lambda p: 3.0, "dense2": lambda p: 2.5, "mod12": lambda p: 2.7, "mod50": lambda p: 3.3}
    make_results(tmp_path, spec_dict(widths=(32, 64), variants=variants), losses=flat)
    t = A.analyze(tmp_path).table.set_index("model")
    assert t.at["w32", "mod12 vs dense %"] == pytest.approx(-10.0)
    assert t.at["w32", "mod50 vs dense2 %"] == pytest.approx(32.0)
    assert {"mod12/dense fwd FLOPs", "mod50/dense2 fwd FLOPs"} <= set(t.columns)


def test_parabola_fit_recovers_known_minimum(tmp_path):
    make_results(tmp_path)
    opt = opt_row(A.analyze(tmp_path).table)
    assert opt["vanilla params"] == pytest.approx(1.5e5, rel=0.01)
    assert opt["mod params"] == pytest.approx(2.5e5, rel=0.01)
    assert opt["vanilla loss"] == pytest.approx(3.0, abs=1e-9)
    assert opt["mod loss"] == pytest.approx(2.95, abs=1e-9)
    assert opt["vanilla n"] == 5 and opt["note"] == ""
    assert opt["mod vs vanilla %"] == pytest.approx(100 * (2.95 - 3.0) / 3.0)


def test_fit_parabola_flags():
    p = np.array([1e5, 2e5, 4e5, 8e5])
    inside = A.fit_parabola(p, [parabola(3e5, 2.0)(x) for x in p])
    assert inside.status == "ok" and inside.opt_params == pytest.approx(3e5, rel=1e-6)
    assert A.fit_parabola(p, [parabola(5e4, 2.0)(x) for x in p]).reason.startswith("minimum at or below")
    assert A.fit_parabola(p, [parabola(2e6, 2.0)(x) for x in p]).reason.startswith("minimum at or above")
    assert "opens downward" in A.fit_parabola(p, [-parabola(3e5, 2.0)(x) for x in p]).reason
    few = A.fit_parabola(p[:2], [2.0, 1.9])
    assert few.coeffs is None and math.isnan(few.opt_params) and few.reason == "fewer than 4 sizes (2)"


def test_edge_of_grid_flagged_in_table_and_warnings(tmp_path):
    make_results(tmp_path, losses={"vanilla": parabola(1e4, 3.0), "mod": parabola(2.5e5, 2.95)})
    rep = A.analyze(tmp_path)
    assert "vanilla: minimum at or below the smallest size" in opt_row(rep.table)["note"]
    assert math.isnan(opt_row(rep.table)["vanilla params"])  # no number from an extrapolation
    assert any("vanilla: no verdict: minimum at or below" in w for w in rep.warnings)
    assert not any("mod: no verdict" in w for w in rep.warnings)


def test_too_few_sizes_flagged(tmp_path):
    make_results(tmp_path, spec_dict(widths=(32, 64)))
    rep = A.analyze(tmp_path)
    opt = opt_row(rep.table)
    assert math.isnan(opt["vanilla params"]) and "fewer than 4 sizes (2)" in opt["note"]
    assert sum("fewer than 4 sizes" in w for w in rep.warnings) == 3  # vanilla, mod, mod causal


def test_seeds_are_averaged_with_n(tmp_path):
    make_results(tmp_path, spec_dict(seeds=(0, 1)), noise={0: 0.0, 1: 0.1})
    t = A.analyze(tmp_path).table.set_index("model")
    assert t.at["w64", "vanilla n"] == 2
    runs = {r.model: r.params for r in build_plan(parse_spec(spec_dict())).runs if r.variant == "vanilla"}
    assert t.at["w64", "vanilla loss"] == pytest.approx(parabola(1.5e5, 3.0)(runs["w64"]) + 0.05)


def test_partial_results_plot_and_list_missing(tmp_path):
    spec = spec_dict(budgets=(2e10, 4e10))
    ids = [r.run_id for r in build_plan(parse_spec(spec)).runs]
    missing = [i for i in ids if i.startswith("4e10") and "w128" in i] + ["2e10-w32-mod-s0"]
    make_results(tmp_path, spec, skip=missing, partial=["2e10-w64-mod-s0"], failed=["2e10-w96-mod-s0"])
    rep = plot_results(tmp_path)
    assert sorted(rep.missing) == sorted(missing)
    # vanilla has interior optima at both budgets, so its frontier is drawn too
    assert len(rep.figures) == 6 and all(is_png(p) for p in rep.figures)
    assert any(re.search(r"2e10-w64-mod-s0: running or interrupted at 3\d% of its budget", w)
               for w in rep.warnings)
    assert any("2e10-w96-mod-s0: failed" in w and "NaN" in w for w in rep.warnings)
    t = rep.table[rep.table.budget == 2e10].set_index("model")
    assert math.isnan(t.at["w64", "mod loss"]) and "mod s0: partial (3" in t.at["w64", "note"]
    assert t.at["w64", "mod n"] == 0 and t.at["w32", "note"] == "mod s0: missing"
    assert opt_row(rep.table)["mod n"] == 2  # only the two finished sizes enter the fit
    assert set(rep.table.budget) == {2e10, 4e10}


def test_svg_and_pdf_formats(tmp_path):
    make_results(tmp_path, spec_dict(widths=(32, 48, 64), variants={"vanilla": {"kind": "vanilla"}}),
                 losses={"vanilla": parabola(1e5, 3.0)})
    rep = plot_results(tmp_path, formats=[".SVG", "pdf"])
    assert sorted(p.name for p in rep.figures) == ["isoflop.pdf", "isoflop.svg", "loss_vs_flops.pdf",
                                                   "loss_vs_flops.svg", "loss_vs_time.pdf",
                                                   "loss_vs_time.svg"]  # no MoD run: no routing figure
    assert {p.read_bytes()[:4] for p in rep.figures} == {b"<?xm", b"%PDF"}


def test_run_dirs_without_plan_file(tmp_path):
    make_results(tmp_path, plan_file=False)
    rep = A.analyze(tmp_path)
    assert len(rep.table) == 6 and rep.results.missing == [] and rep.results.experiment == tmp_path.name


def test_print_report_renders(tmp_path):
    from rich.console import Console

    make_results(tmp_path, spec_dict(widths=(32, 64)), skip=["2e10-w32-mod-s0"])
    an, plots = A.analyze(tmp_path), tmp_path / "plots"
    report = PlotReport([plots / "loss_vs_flops.png"], an.table, plots / "summary.csv", plots / "summary.md",
                        an.results.missing, an.warnings, verdict_dict(an), plots / "verdict.json")
    console = Console(record=True, width=250)
    print_report(report, console)
    text = console.export_text()
    assert "isoFLOP optimum" in text and "fewer than 4 sizes" in text and "missing (1)" in text
    assert "2e10 FLOPs: no verdict" in text and "verdict.json" in text
    assert "loss_vs_flops.png" in text and "summary.md" in text


# ---------------------------------------------------------------- bad input


def _raises(path, *needles) -> SpecError:
    with pytest.raises(SpecError) as e:
        plot_results(path)  # loading fails before any figure is drawn
    assert e.value.source == str(path)
    for n in needles:
        assert any(n in p for p in e.value.problems), (n, e.value.problems)
    return e.value


def test_missing_folder(tmp_path):
    _raises(tmp_path / "nope", "folder not found")


def test_empty_folder(tmp_path):
    _raises(tmp_path, "no plan.json and no run folders")
    assert not (tmp_path / "plots").exists()


def test_plan_without_any_metrics(tmp_path):
    make_results(tmp_path, skip=[r.run_id for r in build_plan(parse_spec(spec_dict())).runs])
    _raises(tmp_path, "no run has any metrics yet (10 planned, 0 started)")
    assert not (tmp_path / "plots").exists()


def test_malformed_files_all_reported(tmp_path):
    make_results(tmp_path)
    bad_json = tmp_path / "2e10-w32-vanilla-s0" / "metrics.jsonl"
    bad_json.write_text('{"kind": "train", "step": 2}\n{oops\n{"kind": "eval", "step": 4}\n')
    bad_row = tmp_path / "2e10-w48-vanilla-s0" / "metrics.jsonl"
    bad_row.write_text('{"kind": "train", "step": 2, "lm_loss": "high"}\n{"kind": "what", "step": 3}\n')
    (tmp_path / "2e10-w64-vanilla-s0" / "summary.json").write_text("{not json")
    err = _raises(tmp_path, "2e10-w32-vanilla-s0/metrics.jsonl", "line 2 is not valid JSON",
                  "2e10-w48-vanilla-s0/metrics.jsonl row 1: lm_loss is 'high'",
                  "row 2: kind is 'what'", "2e10-w64-vanilla-s0/summary.json: not valid JSON")
    assert len(err.problems) == 4
    assert not (tmp_path / "plots").exists()


def test_unknown_run_dir(tmp_path):
    make_results(tmp_path)
    MetricsWriter(tmp_path / "stray").log({"kind": "train", "step": 1, "flops": 1.0, "lm_loss": 3.0})
    _raises(tmp_path, "stray: no run.json and not in plan.json")


def test_malformed_plan_json(tmp_path):
    make_results(tmp_path)
    (tmp_path / "plan.json").write_text(json.dumps({"experiment": "x", "runs": [{"run_id": "a"}]}))
    _raises(tmp_path, "plan.json runs[0]: plan entry lacks budget")


def test_unknown_format(tmp_path):
    make_results(tmp_path)
    with pytest.raises(SpecError, match="unsupported format 'jpg'"):
        plot_results(tmp_path, formats=["jpg"])
    assert not (tmp_path / "plots").exists()


def test_torn_last_line_is_ignored(tmp_path):
    make_results(tmp_path, partial=["2e10-w32-vanilla-s0"])
    with open(tmp_path / "2e10-w32-vanilla-s0" / "metrics.jsonl", "a") as f:
        f.write('{"kind": "train", "st')  # killed mid-write
    an = A.analyze(tmp_path)
    assert an.results.runs.set_index("run_id").at["2e10-w32-vanilla-s0", "state"] == "partial"


def test_no_torch_import(tmp_path):
    make_results(tmp_path, spec_dict(widths=(32, 48, 64)))
    code = ("import sys; from modexp.analysis.plot import plot_results; "
            f"plot_results({str(tmp_path)!r}); assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])
