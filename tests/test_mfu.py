"""MFU: the pure math (modexp/training/mfu.py), the per-machine peak cache, and the trainer's fields."""

from __future__ import annotations

import json

import pytest

from modexp.training import mfu, peak


def test_mfu_math():
    assert mfu.flops_per_s(3e12, 2.0) == 1.5e12
    assert mfu.flops_per_s(1e12, 0.0) == 0.0
    assert mfu.mfu(1.5e12, 3e12) == 0.5
    assert mfu.mfu(1.5e12, None) is None
    assert mfu.throughput_fields(6e9, 3.0, 4e9) == {"flops_per_s": 2e9, "mfu": 0.5}


def test_gpu_peak_table_lookup():
    assert mfu.gpu_peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert mfu.gpu_peak_flops("NVIDIA H100 PCIe") == 756e12  # the more specific name first
    assert mfu.gpu_peak_flops("NVIDIA A100-SXM4-40GB", "tf32") == 156e12
    assert mfu.gpu_peak_flops("Some Future GPU") is None


def test_peak_is_measured_once_then_read_from_the_cache(monkeypatch):
    calls = []
    monkeypatch.setattr(peak, "measure_matmul_peak", lambda **kw: calls.append(kw) or 123e9)
    assert peak.cached_peak("cpu", measure=False) is None  # nothing cached, nothing measured
    assert peak.cached_peak("cpu") == 123e9
    assert peak.cached_peak("cpu") == 123e9
    assert len(calls) == 1
    data = json.loads(peak.cache_path().read_text())
    key = peak.machine_key("cpu")
    assert data[key]["flops_per_s"] == 123e9 and "threads" in key and "torch" in key
    other = key.replace("threads", "threads (other)")
    peak.write_cached_peak(other, 1.0)  # another machine's entry does not replace ours
    assert peak.read_cached_peak(key) == 123e9 and peak.read_cached_peak(other) == 1.0


def test_corrupt_cache_reads_as_unknown():
    path = peak.cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{not json")
    assert peak.read_cached_peak(peak.machine_key("cpu")) is None


def test_measured_peak_is_a_plausible_rate():
    got = peak.measure_matmul_peak(m=64, k=64, n=64, repeats=2)
    assert 1e6 < got < 1e15


def test_setup_context_takes_the_given_peak_or_the_cached_one(monkeypatch):
    from modexp.training.train import setup_context

    assert setup_context("cpu", peak_tflops=2.0).peak_flops == pytest.approx(2e12)
    assert setup_context("cpu").peak_flops is None  # no cached peak in this test's cache
    peak.write_cached_peak(peak.machine_key("cpu"), 5e10)
    assert setup_context("cpu").peak_flops == 5e10


def test_run_rows_and_summary_carry_flops_per_s_mfu_and_eval_share(write_spec, tmp_path):
    from typer.testing import CliRunner

    from modexp.cli import app
    from modexp.runs.metrics import read_json, read_metrics

    res = tmp_path / "res"
    out = CliRunner().invoke(app, ["run", str(write_spec()), "--results", str(res),
                                   "--only", "*vanilla*", "--peak-tflops", "0.5"])
    assert out.exit_code == 0, out.output
    run = next((res / "tiny").glob("*vanilla*"))
    train = [r for r in read_metrics(run / "metrics.jsonl") if r["kind"] == "train"]
    assert all(r["flops_per_s"] > 0 and r["mfu"] == pytest.approx(r["flops_per_s"] / 0.5e12)
               for r in train)
    s = read_json(run / "summary.json")
    assert s["flops_per_s"] == pytest.approx(s["flops"] / s["wall_time"])
    assert s["mfu"] == pytest.approx(s["flops_per_s"] / 0.5e12)
    assert 0 < s["eval_time"] < s["wall_time"] and s["eval_share"] == pytest.approx(
        s["eval_time"] / s["wall_time"])
    bad = CliRunner().invoke(app, ["run", str(write_spec()), "--results", str(res),
                                   "--peak-tflops", "-1"])
    assert bad.exit_code == 2 and "peak-tflops" in bad.output
