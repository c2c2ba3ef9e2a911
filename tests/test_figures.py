"""The eval-curve, wall-clock and routing figures: each is written, and what it draws is the
data it should draw (envelopes, training time, heatmap cells, position bins)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from modexp.analysis import curves as C
from modexp.analysis import routing as R
from modexp.analysis.plot import plot_results
from modexp.analysis.results import load_results
from modexp.runs.metrics import read_metrics
from test_plot import is_png, make_results, parabola, spec_dict


def _rewrite(run_dir, edit):
    """Rewrite a run's metrics.jsonl row by row (edit(row) -> row)."""
    path = run_dir / "metrics.jsonl"
    rows = [edit(r) for r in read_metrics(path)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_envelope_is_the_per_x_minimum_of_the_eval_curves(tmp_path):
    """One budget: every size is evaluated at the same nominal FLOPs, so the envelope there is
    the least eval loss over sizes at each point, variant by variant."""
    make_results(tmp_path, spec_dict(budgets=(2e10,)))
    curves = C.eval_curves(load_results(tmp_path))
    env = C.envelope(curves)
    assert set(env.variant) == {"vanilla", "mod"}
    for variant, vc in curves.groupby("variant"):
        want = vc.groupby("nominal_flops")["loss"].min()
        got = env[env.variant == variant].set_index("nominal_flops")["loss"]
        assert list(got.index) == list(want.index) and len(got) == 5  # eval_points: 5
        assert got.to_numpy() == pytest.approx(want.to_numpy(), abs=1e-12)
        best = env[env.variant == variant].iloc[-1]
        final = vc[vc.budget_frac == vc.budget_frac.max()]
        assert best["model"] == final.loc[final["loss"].idxmin(), "model"]


def test_envelope_interpolates_within_each_curve_only():
    """Curves end where their runs ended: past its end a curve is not in the envelope, and
    between its evaluations it is read linearly in log x."""
    curves = pd.DataFrame({"variant": "v", "model": ["a", "a", "b", "b", "b"], "budget": [1e9, 1e9, 1e10, 1e10, 1e10],
                           "nominal_flops": [1e8, 1e9, 1e8, 1e9, 1e10], "loss": [3.0, 2.0, 3.5, 2.5, 1.5]})
    env = C.envelope(curves).set_index("nominal_flops")
    assert env.loc[1e8, "loss"] == 3.0 and env.loc[1e9, "loss"] == 2.0 and env.loc[1e9, "model"] == "a"
    assert env.loc[1e10, "loss"] == 1.5 and env.loc[1e10, "model"] == "b"  # a ends at 1e9
    curves.loc[4, "nominal_flops"] = 1e11  # b: 2.5 at 1e9, 1.5 at 1e11 -> 2.0 at 1e10 (log x)
    curves.loc[len(curves)] = ["v", "c", 1e12, 1e10, 2.2]
    env = C.envelope(curves).set_index("nominal_flops")
    assert env.loc[1e10, "loss"] == pytest.approx(2.0) and env.loc[1e10, "model"] == "b"


def test_training_time_leaves_evaluation_out():
    """Seconds of training: each train row's tokens over its throughput, summed; wall_time
    (evaluation included) only where rows have no throughput."""
    tr = pd.DataFrame({"step": [2, 4, 6], "tokens": [100, 200, 300], "tokens_per_s": [50.0, 100.0, 25.0],
                       "wall_time": [9.0, 99.0, 999.0]})
    assert list(C.training_time(tr)) == [2.0, 3.0, 7.0]
    assert list(C.training_time(tr.drop(columns="tokens_per_s"))) == [9.0, 99.0, 999.0]


def test_loss_vs_time_points_are_the_runs_training_time(tmp_path):
    make_results(tmp_path)  # train rows every 2 steps at 1e4 tokens/s
    res = load_results(tmp_path)
    pts = C.eval_points(res)
    r = res.runs.iloc[0]
    mine = pts[pts.run_id == r.run_id]
    ev = res.rows(r.run_id, "eval")
    tokens_per_step = ev["tokens"].iloc[0] / ev["step"].iloc[0]
    # between train rows the time is interpolated (exact at a constant throughput); the trainer
    # logs a train row at every eval step, this writer every 2 steps up to its last
    logged = (ev["step"] <= res.rows(r.run_id, "train")["step"].max()).to_numpy()
    assert logged.sum() >= 4
    assert mine["train_time"].to_numpy()[logged] == pytest.approx(
        ev["step"].to_numpy()[logged] * tokens_per_step / 1e4)


def _vary_routing(root):
    """Give each MoD eval row a causal routed fraction that depends on its step and layer, and
    each train row a top-k fraction that does, so the heatmap's cells are checkable."""
    def edit(row):
        if row["kind"] == "eval" and "routed_frac_causal" in row:
            row["routed_frac_causal"] = [0.01 * row["step"] + 0.1 * i for i in range(len(row["routed_frac_causal"]))]
        if row["kind"] == "train" and row.get("routed_frac"):
            row["routed_frac"] = [0.2 + 0.001 * row["step"] + 0.1 * i for i in range(len(row["routed_frac"]))]
        return row

    for d in root.iterdir():
        if d.is_dir() and "-mod-" in d.name:
            _rewrite(d, edit)


def test_heatmap_cells_equal_the_logged_fractions(tmp_path):
    make_results(tmp_path)
    _vary_routing(tmp_path)
    res = load_results(tmp_path)
    (key, ids), *_ = R.mod_groups(res)
    g = R.layer_grid(res, ids)
    ev, tr = res.rows(ids[0], "eval"), res.rows(ids[0], "train")
    routed, n_layers = R.routed_layers(res, ids[0])
    assert n_layers == 4 and routed == [1, 3]  # route_every 2
    assert len(g.labels) == 2 + 2 * len(routed)  # dense rows, and two per routed layer
    assert g.labels[0] == "layer 0: dense" and np.isnan(g.values[0]).all()
    assert g.flops == pytest.approx((ev["budget_frac"] * key[0]).to_numpy())
    for i, layer in enumerate(routed):
        causal = g.values[g.labels.index(f"layer {layer}: causal (eval)")]
        assert causal == pytest.approx([row[i] for row in ev["routed_frac_causal"]])
        train = g.values[g.labels.index(f"layer {layer}: top-k (train)")]
        bounds = [-1, *ev["step"]]
        want = [np.mean([row[i] for row in tr.loc[(tr.step > a) & (tr.step <= b), "routed_frac"]])
                for a, b in zip(bounds, bounds[1:])]
        assert train == pytest.approx(want)
    assert g.capacity == 0.25


def test_seeds_are_averaged_in_the_heatmap(tmp_path):
    make_results(tmp_path, spec_dict(seeds=(0, 1)))
    for d in tmp_path.iterdir():  # seed 1 routes 0.1 more in every causal cell
        if d.is_dir() and "-mod-" in d.name and d.name.endswith("s1"):
            _rewrite(d, lambda r: {**r, "routed_frac_causal": [v + 0.1 for v in r["routed_frac_causal"]]}
                     if "routed_frac_causal" in r else r)
    res = load_results(tmp_path)
    (key, ids), *_ = R.mod_groups(res)
    assert len(ids) == 2
    g = R.layer_grid(res, ids)
    row = g.values[g.labels.index("layer 1: causal (eval)")]
    assert row == pytest.approx([0.22 + 0.05] * len(row))  # (0.22 + 0.32) / 2


def test_every_figure_written_and_positions_panel_only_with_its_data(tmp_path):
    """Old eval rows (no by-position statistic) plot, with no position panel; rows with it
    give a profile equal to the last eval row's bins."""
    make_results(tmp_path)
    rep = plot_results(tmp_path)
    names = {p.name for p in rep.figures}
    assert {"loss_vs_flops.png", "loss_vs_time.png", "mod_routing.png", "routing_heatmap.png"} <= names
    assert all(is_png(p) for p in rep.figures)
    res = load_results(tmp_path)
    assert not R.has_positions(res)
    starts = [0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30]

    def edit(row):
        if row["kind"] == "eval" and "routed_frac_causal" in row:
            row["pos_bin_starts"] = starts
            row["routed_frac_causal_pos"] = [[0.01 * row["step"] + 0.01 * b for b in range(16)],
                                             [0.3] * 16]
        return row

    for d in tmp_path.iterdir():
        if d.is_dir() and "-mod-" in d.name:
            _rewrite(d, edit)
    res = load_results(tmp_path)
    assert R.has_positions(res)
    (key, ids), *_ = R.mod_groups(res)
    got_starts, fracs = R.position_profile(res, ids)
    last = res.rows(ids[0], "eval").iloc[-1]
    assert got_starts == starts and fracs == pytest.approx(np.array(last["routed_frac_causal_pos"]))
    assert R.bin_edges(starts)[-1] == 32
    rep = plot_results(tmp_path)
    assert all(is_png(p) for p in rep.figures)


def test_real_tiny_mod_run_plots_its_logged_routing(write_spec, tmp_path):
    """A real MoD run: the heatmap's causal cells are its eval rows' routed_frac_causal and
    its position bins give back that fraction (bins weighted by their widths)."""
    from typer.testing import CliRunner

    from modexp.cli import app
    from tests.conftest import TINY

    spec = write_spec(variants={"mod": TINY["variants"]["mod"]})
    r = CliRunner().invoke(app, ["run", str(spec), "--results", str(tmp_path / "res"), "--device", "cpu", "-q"])
    assert r.exit_code == 0, r.output
    root = tmp_path / "res" / "tiny"
    res = load_results(root)
    (key, ids), = R.mod_groups(res)
    ev = res.rows(ids[0], "eval")
    g = R.layer_grid(res, ids)
    assert g.values[g.labels.index("layer 1: causal (eval)")] == pytest.approx(
        [row[0] for row in ev["routed_frac_causal"]])
    for _, row in ev.iterrows():
        edges = R.bin_edges(row["pos_bin_starts"])
        assert edges[-1] == 32
        widths = np.diff(edges)
        assert float(np.dot(row["routed_frac_causal_pos"][0], widths) / 32) == pytest.approx(
            row["routed_frac_causal"][0], abs=1e-6)
    rep = plot_results(root)
    assert {"mod_routing.png", "routing_heatmap.png", "loss_vs_time.png"} <= {p.name for p in rep.figures}
    assert all(is_png(p) for p in rep.figures)


def test_mod_run_without_eval_rows_yet_plots(tmp_path):
    """A MoD run interrupted before its first evaluation (train rows only) is drawn as far as
    it goes; the figures of the other runs are written."""
    make_results(tmp_path, losses={"vanilla": parabola(1.5e5, 3.0), "mod": parabola(2.5e5, 2.95)})
    d = next(d for d in tmp_path.iterdir() if d.is_dir() and "-mod-" in d.name)
    (d / "summary.json").unlink()
    rows = [r for r in read_metrics(d / "metrics.jsonl") if r["kind"] == "train"][:3]
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    rep = plot_results(tmp_path)
    assert {"mod_routing.png", "routing_heatmap.png"} <= {p.name for p in rep.figures}
    assert all(is_png(p) for p in rep.figures)
