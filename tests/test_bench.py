"""modexp/bench.py on tiny models: it runs and reports ratios (no timed asserts: CI is noisy)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from rich.console import Console

from modexp import flops
from modexp.bench import (bench, calibrate_routing, decode_flop_ratio, print_bench, report_dict,
                          resolve, weight_read_ratio)
from modexp.spec import SpecError
from tests.test_sample import write_run

FAST = dict(batch_sizes=(1, 2), prompt_len=4, new_tokens=8, warmup=0, repeats=1,
            train_repeats=1, train_batch=2)


def test_bench_on_a_spec_reports_every_ratio(write_spec):
    report = bench(write_spec(), **FAST)
    assert [r.what for r in report.ratios] == ["decode b1", "decode b2", "train step"]
    for r in report.ratios:
        assert r.vanilla > 0 and r.mod > 0 and r.measured > 0
        assert math.isfinite(r.realisation)
    assert report.ratios[-1].analytic > 1  # MoD trains on fewer FLOPs
    assert all(len(r.routed_frac) == 1 for r in report.ratios[:2])  # tiny: layer 1 routed
    b1, b2 = report.ratios[:2]
    assert b1.busy == [] and len(b2.busy) == 1 and b2.routed_frac[0] <= b2.busy[0] <= 1
    assert b2.weight_bound == pytest.approx(weight_read_ratio(resolve(write_spec()), b2.busy))
    assert "capacity" in report.routing_note and report.weights["mod"] == "fresh init"
    assert [m.what for m in report.memory] == ["decode b1", "  of which KV cache", "train step"]
    assert all(m.vanilla_bytes > 0 and m.mod_bytes > 0 for m in report.memory)
    json.dumps(report_dict(report))  # plain data for --json
    console = Console(record=True, width=200)
    print_bench(report, console)
    assert "realisation" in console.export_text()


def test_calibration_routes_the_capacity_fraction(write_spec):
    pair = resolve(write_spec(variants={"vanilla": {"kind": "vanilla"},
                                        "mod": {"kind": "mod", "capacity": 0.25, "route_every": 1,
                                                "causal": "predictor"}}))
    sample = torch.randint(0, 256, (8, 32), generator=torch.Generator().manual_seed(0))
    calibrate_routing(pair.nets["mod"], sample)
    with torch.no_grad():
        out = pair.nets["mod"](sample, routing="causal")
    frac = out.stats["routed"].float() / out.stats["tokens"]
    torch.testing.assert_close(frac, torch.full_like(frac, 0.25), atol=1 / 256, rtol=0)


def test_decode_flop_ratio_uses_the_measured_fraction(write_spec):
    pair = resolve(write_spec())
    at_capacity = decode_flop_ratio(pair, 8, 24, [0.25])
    arch = {k: flops.arch_from_config(pair.model_cfg, v, 256) for k, v in pair.variants.items()}
    expected = flops.decode_flops(arch["vanilla"], 8, 24) / flops.decode_flops(arch["mod"], 8, 24)
    assert at_capacity == pytest.approx(expected)
    assert decode_flop_ratio(pair, 8, 24, [0.0]) > at_capacity > 1
    assert decode_flop_ratio(pair, 8, 24, [1.0]) < 1  # routing everything adds the router's cost


def test_weight_read_ratio_counts_a_routed_layer_only_when_some_row_runs_it(write_spec):
    pair = resolve(write_spec())  # xs: 2 layers, layer 1 routed
    arch = flops.arch_from_config(pair.model_cfg, pair.variants["mod"], 256)
    block, head, extra = flops.block_params(arch), arch.d_model * 256, flops.router_params(arch)
    assert weight_read_ratio(pair, [0.0]) == (2 * block + head) / (block + extra + head)
    assert weight_read_ratio(pair, [1.0]) == (2 * block + head) / (2 * block + extra + head)


def test_a_run_folder_benchmarks_the_checkpoints_of_both_kinds(tmp_path):
    mod_dir, _ = write_run(tmp_path, "mod"), write_run(tmp_path, "vanilla")
    pair = resolve(mod_dir)
    assert pair.weights == {"vanilla": "checkpoint 2e9-xs-vanilla-s0 (step 7)",
                            "mod": "checkpoint 2e9-xs-mod-s0 (step 7)"}


def test_bad_targets_are_spec_errors(tmp_path):
    with pytest.raises(SpecError, match="run folder"):
        resolve(tmp_path)
    with pytest.raises(SpecError, match="not found"):
        resolve(tmp_path / "missing.yaml")


def test_bench_command_json_and_bad_target(write_spec, tmp_path):
    from typer.testing import CliRunner

    from modexp.cli import app

    args = ["bench", str(write_spec()), "--batch-size", "1", "--prompt-len", "4",
            "--new-tokens", "6", "--repeats", "1", "--train-repeats", "1", "--device", "cpu"]
    result = CliRunner().invoke(app, args + ["--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [r["what"] for r in report["ratios"]] == ["decode b1", "train step"]
    assert all(r["realisation"] > 0 for r in report["ratios"])
    table = CliRunner().invoke(app, args + ["--no-train"])
    assert table.exit_code == 0 and "decode b1" in table.output and "train step" not in table.output
    bad = CliRunner().invoke(app, ["bench", str(tmp_path / "missing.yaml")])
    assert bad.exit_code == 2 and "not found" in bad.output and "Traceback" not in bad.output
