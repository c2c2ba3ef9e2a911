"""Shape families in the analysis: results written before plan entries carried a family fall
back to their spec, and a variant's optimum is the envelope over its families
(modexp/analysis/envelope.py), on synthetic results folders with a known answer."""

from __future__ import annotations

import json

import numpy as np
import pytest

from modexp.analysis import isoflop as I
from modexp.analysis.roles import BASELINE, CONTROL, TREATMENT, role
from modexp.analysis.verdict import verdict_json
from modexp.plan import build_plan
from modexp.runs.metrics import write_json_atomic
from modexp.spec import SpecError, parse_spec, spec_to_dict

from test_plot import make_results, parabola, write_run

DEPTH_WIDTHS = {1: (16, 24, 32, 48, 64), 2: (12, 16, 24, 32, 48)}  # 10k-80k params at seq_len 32
EVERY_LAYER = {"vanilla": {"kind": "vanilla"},
               "mod": {"kind": "mod", "capacity": 0.25, "route_every": 1}}  # routes at depth 1 too


def depth_spec(variants=EVERY_LAYER, seeds=(0, 1), budgets=(1e9,)) -> dict:
    models = [{"name": f"L{L}d{d}", "n_layers": L, "d_model": d, "n_heads": 2}
              for L, ws in DEPTH_WIDTHS.items() for d in ws]
    return {"name": "depths", "seeds": list(seeds), "data": {"seq_len": 32}, "budgets": list(budgets),
            "models": models, "variants": variants,
            "train": {"batch_size": 4, "eval_points": 3, "log_every": 2}}


def depth_sweep(root, truths: dict, skip=lambda r: False, noise=0.002, **kw):
    """A results folder; truths[(variant, n_layers)] = (optimum params, optimal loss)."""
    spec = depth_spec(**kw)
    resolved, runs = spec_to_dict(parse_spec(spec)), build_plan(parse_spec(spec)).runs
    write_json_atomic(root / "plan.json", {"experiment": spec["name"], "spec": resolved,
                                           "runs": [r.to_dict() for r in runs]})
    rng = np.random.default_rng(0)
    for r in runs:
        e = rng.normal(0, noise)
        if not skip(r):
            write_run(root, r, resolved, parabola(*truths[r.variant, r.n_layers], curv=0.4)(r.params) + e)
    return runs


# ---------------------------------------------------------------- results written before families


def _strip_shape(path):
    obj = json.loads(path.read_text())
    entries = obj["runs"] if "runs" in obj else [obj["plan"]]
    for e in entries:
        e.pop("family"), e.pop("n_layers")
    path.write_text(json.dumps(obj))


def test_old_results_take_the_family_from_their_spec(tmp_path):
    make_results(tmp_path)
    for p in [tmp_path / "plan.json", *tmp_path.glob("*/run.json")]:
        _strip_shape(p)
    runs = I.analyze(tmp_path).results.runs
    assert set(runs.family) == {"L4"} and set(runs.n_layers) == {4}


def test_old_results_without_a_spec_are_one_family(tmp_path):
    make_results(tmp_path, plan_file=False)
    for p in tmp_path.glob("*/run.json"):
        _strip_shape(p)
        obj = json.loads(p.read_text())
        obj["spec"] = {}
        p.write_text(json.dumps(obj))
    an = I.analyze(tmp_path)
    assert set(an.results.runs.family) == {"all"} and an.envelopes.status.eq("ok").all()


def test_a_plan_entry_whose_depth_disagrees_with_its_spec_is_refused(tmp_path):
    make_results(tmp_path)
    p = next(tmp_path.glob("*/run.json"))
    obj = json.loads(p.read_text())
    obj["plan"]["n_layers"] = 3
    p.write_text(json.dumps(obj))
    with pytest.raises(SpecError) as e:
        I.analyze(tmp_path)
    assert any("plan entry has n_layers 3 but its spec's model" in x for x in e.value.problems)


# ---------------------------------------------------------------- envelopes


def test_the_best_family_changes_between_variants(tmp_path):
    depth_sweep(tmp_path, {("vanilla", 1): (2.5e4, 2.40), ("vanilla", 2): (2.5e4, 2.45),
                           ("mod", 1): (2.5e4, 2.47), ("mod", 2): (3.5e4, 2.38)})
    b = verdict_json(tmp_path)["budgets"][0]
    van, mod = b["fits"]["vanilla"], b["fits"]["mod"]
    assert set(van["families"]) == set(mod["families"]) == {"L1", "L2"}
    assert van["best_family"] == "L1" and mod["causal"]["best_family"] == "L2"
    assert van["opt_loss"] == pytest.approx(2.40, abs=0.01) == van["families"]["L1"]["opt_loss"]
    assert van["families"]["L2"]["opt_loss"] == pytest.approx(2.45, abs=0.01)
    vd = b["verdict"]
    assert (vd["vanilla"]["family"], vd["mod"]["family"]) == ("L1", "L2")
    # MoD causal (top-k + 0.03 in write_run) against vanilla: 2.41 - 2.40
    assert vd["mod_vs_vanilla"]["delta_loss"] == pytest.approx(0.01, abs=0.01)
    assert vd["mod_vs_vanilla_topk"]["delta_loss"] == pytest.approx(-0.02, abs=0.01)
    assert van["left_out"] and "family L2 left out" in van["left_out"][0]


def test_a_family_that_could_win_with_an_edge_minimum_gives_no_verdict(tmp_path):
    depth_sweep(tmp_path, {("vanilla", 1): (5e3, 2.30), ("vanilla", 2): (2.5e4, 2.45),
                           ("mod", 1): (2.5e4, 2.47), ("mod", 2): (3.5e4, 2.38)})
    b = verdict_json(tmp_path)["budgets"][0]
    van = b["fits"]["vanilla"]
    assert van["families"]["L2"]["status"] == "ok" and van["families"]["L1"]["status"] == "no verdict"
    assert van["status"] == "no verdict" and van["opt_loss"] is None
    assert van["reason"].startswith("family L1 could be the best: minimum at or below the smallest size")
    assert b["verdict"]["status"] == "no verdict"
    assert any("family L1 could be the best" in d for d in b["verdict"]["details"])


def test_a_clearly_worse_family_with_an_edge_minimum_is_left_out(tmp_path):
    depth_sweep(tmp_path, {("vanilla", 1): (5e3, 2.80), ("vanilla", 2): (2.5e4, 2.45),
                           ("mod", 1): (2.5e4, 2.47), ("mod", 2): (3.5e4, 2.38)})
    van = verdict_json(tmp_path)["budgets"][0]["fits"]["vanilla"]
    assert van["status"] == "ok" and van["best_family"] == "L2" and van["contenders"] == ["L2"]
    assert "family L1 left out: no verdict (minimum at or below the smallest size" in van["left_out"][0]


def test_a_planned_family_without_finished_runs_could_be_the_best(tmp_path):
    depth_sweep(tmp_path, {("vanilla", 1): (2.5e4, 2.40), ("vanilla", 2): (2.5e4, 2.45),
                           ("mod", 1): (2.5e4, 2.47), ("mod", 2): (3.5e4, 2.38)},
                skip=lambda r: r.variant == "vanilla" and r.n_layers == 1)
    van = verdict_json(tmp_path)["budgets"][0]["fits"]["vanilla"]
    assert van["families"]["L1"]["reason"] == "fewer than 4 sizes (0)"
    assert van["status"] == "no verdict" and "family L1 could be the best" in van["reason"]


def test_mod_has_no_family_where_it_routes_nothing(tmp_path):
    variants = {"vanilla": {"kind": "vanilla"}, "mod": {"kind": "mod", "capacity": 0.25}}
    depth_sweep(tmp_path, {("vanilla", 1): (2.5e4, 2.40), ("vanilla", 2): (2.5e4, 2.45),
                           ("mod", 2): (3.5e4, 2.38)}, variants=variants)
    fits = verdict_json(tmp_path)["budgets"][0]["fits"]
    assert set(fits["vanilla"]["families"]) == {"L1", "L2"} and set(fits["mod"]["families"]) == {"L2"}


def test_a_mod_without_causal_loss_cannot_enter_the_verdict(tmp_path):
    make_results(tmp_path)
    for p in tmp_path.glob("*-mod-*/summary.json"):
        s = json.loads(p.read_text())
        s["final_eval_loss_causal"] = None
        p.write_text(json.dumps(s))
    for p in tmp_path.glob("*-mod-*/metrics.jsonl"):
        rows = [json.loads(x) for x in p.read_text().splitlines()]
        p.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "eval_loss_causal"}) + "\n"
                             for r in rows))
    v = verdict_json(tmp_path)
    b = v["budgets"][0]
    assert "causal" not in b["fits"]["mod"] and b["fits"]["mod"]["verdict_metric"] is None
    vd = b["verdict"]
    assert vd["status"] == "no verdict" and vd["reason"] == "no learned MoD variant has a causal eval loss"
    assert vd["treatments"]["mod"]["metric"] is None and "has no causal eval loss" in vd["treatments"]["mod"]["reason"]


def test_roles_are_decided_in_one_place():
    assert role("vanilla", None) == BASELINE
    assert role("mod", "learned") == TREATMENT and role("mod", None) == TREATMENT
    assert role("mod", "random") == CONTROL


def test_no_reading_rests_on_an_optimum_whose_refits_leave_the_grid():
    """Under 90% interior refits on either side: the reading is "no verdict", with the share."""
    from modexp.analysis.bootstrap import Draws
    from modexp.analysis.verdict import _delta

    rng = np.random.default_rng(0)
    loss = rng.normal(2.3, 0.01, 1000)
    out = np.arange(1000) < 150  # 15% of refits without an interior minimum
    edgy = Draws(np.where(out, np.nan, 1.0), np.where(out, np.nan, loss - 0.2), "seeds")
    a = {"variant": "mod", "opt_loss": 2.1, "draws": edgy, "boot_interior": edgy.interior}
    b = {"variant": "vanilla", "opt_loss": 2.3, "draws": Draws(np.ones(1000), loss, "seeds"), "boot_interior": 1.0}
    d = _delta(a, b)
    assert d["delta_loss_ci"][1] < 0  # an interval that alone would read "lower"
    assert d["reading"] == "no verdict" and "only 85% of mod's refits have an interior optimum" in d["reason"]
    assert _delta(b | {"variant": "other"}, b)["reading"] == "level within the interval"


def test_plot_draws_families_and_equal_size_differences(tmp_path):
    from modexp.analysis.plot import plot_results

    from test_plot import is_png

    depth_sweep(tmp_path, {("vanilla", 1): (2.5e4, 2.40), ("vanilla", 2): (2.5e4, 2.45),
                           ("mod", 1): (2.5e4, 2.47), ("mod", 2): (3.5e4, 2.38)})
    rep = plot_results(tmp_path)
    names = {p.name for p in rep.figures}
    assert {"isoflop.png", "equal_size.png", "loss_vs_flops.png"} <= names
    assert all(is_png(p) for p in rep.figures)
    md = rep.markdown.read_text()
    assert "### 1e9 training FLOPs" in md and "| vanilla | eval | L1 | 5 |" in md and "| mod | causal | L2 | 5 |" in md
    assert "optimum over families: L1" in md and "beside it, on top-k:" in md
    t = rep.table
    assert list(t.columns[:3]) == ["budget", "model", "family"]
    assert t[t.model == "isoFLOP optimum"].family.iloc[0] == "vanilla L1; mod L2"


def test_a_control_in_one_family_is_also_compared_within_that_family(tmp_path):
    """budgets[].variant_families puts the control in one family; its like-for-like comparison
    is with the treatment's envelope over that family, not the treatment's best family."""
    variants = dict(EVERY_LAYER, rand={"kind": "mod", "capacity": 0.25, "route_every": 1,
                                       "router": "random"})
    names = [f"L{L}d{d}" for L, ws in DEPTH_WIDTHS.items() for d in ws]
    budgets = [{"flops": 1e9, "models": names, "variant_families": {"rand": ["L1"]}}]
    runs = depth_sweep(tmp_path, {("vanilla", 1): (2.5e4, 2.60), ("vanilla", 2): (2.5e4, 2.62),
                                  ("mod", 1): (2.5e4, 2.50), ("mod", 2): (3.5e4, 2.38),
                                  ("rand", 1): (2.5e4, 2.55)}, variants=variants, budgets=budgets)
    assert {r.family for r in runs if r.variant == "rand"} == {"L1"}
    c = verdict_json(tmp_path)["budgets"][0]["verdict"]["controls"]["rand"]
    overall, same = c["vs_treatments"]["mod"], c["vs_treatments_same_families"]["mod"]
    assert overall["delta_loss"] == pytest.approx(2.55 - 2.38, abs=0.01)  # vs MoD's best, L2
    assert same["families"] == ["L1"]
    assert same["delta_loss"] == pytest.approx(2.55 - 2.50, abs=0.01)  # vs MoD in L1
    assert same["reading"] == "higher" and same["delta_loss_ci"][0] > 0


def test_a_control_in_every_family_has_no_separate_same_family_comparison(tmp_path):
    variants = dict(EVERY_LAYER, rand={"kind": "mod", "capacity": 0.25, "route_every": 1,
                                       "router": "random"})
    depth_sweep(tmp_path, {("vanilla", 1): (2.5e4, 2.60), ("vanilla", 2): (2.5e4, 2.62),
                           ("mod", 1): (2.5e4, 2.50), ("mod", 2): (3.5e4, 2.38),
                           ("rand", 1): (2.5e4, 2.55), ("rand", 2): (3.5e4, 2.45)}, variants=variants)
    c = verdict_json(tmp_path)["budgets"][0]["verdict"]["controls"]["rand"]
    assert c["vs_treatments_same_families"]["mod"] is None and c["vs_treatments"]["mod"]


def test_a_family_label_is_out_of_the_fingerprint_a_width_in_it():
    """models[].family only groups runs for the analysis: renaming it refuses no finished run."""
    from modexp.runs.fingerprint import fingerprint

    def prints(**model):
        spec = parse_spec(dict(depth_spec(seeds=(0,)), models=[
            {"name": "m", "n_layers": 2, "d_model": 16, "n_heads": 2, **model}]))
        return fingerprint(spec_to_dict(spec), build_plan(spec).runs[0].to_dict(), {"sha256": "x"})

    assert prints()["sha256"] == prints(family="wide")["sha256"]
    assert prints()["sha256"] != prints(d_model=24)["sha256"]
