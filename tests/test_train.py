"""The trainer and `modexp run`: FLOP-exact, resumable bit for bit, failures recorded, locks."""

import json
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from modexp.cli import app
from modexp.runs.metrics import read_json, read_metrics
from modexp.runs.runner import run_sweep
from modexp.training import train as T

from conftest import TINY
from conftest import StopAt as _StopAt

runner = CliRunner()
VOLATILE = {"wall_time", "tokens_per_s", "flops_per_s", "mfu"}


def _rows(run_dir):
    return [{k: v for k, v in r.items() if k not in VOLATILE} for r in read_metrics(run_dir / "metrics.jsonl")]


def test_lr_schedule_spans_exactly_the_planned_steps():
    f = [T.lr_factor(s, 100, 10, 0.1) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0) and f[10] == pytest.approx(1.0)
    assert f[-1] == pytest.approx(0.1)  # min_lr exactly at the last planned step
    assert all(a >= b for a, b in zip(f[10:], f[11:]))


def test_tiny_spec_trains_end_to_end(write_spec, tmp_path):
    result = runner.invoke(app, ["run", str(write_spec()), "--results", str(tmp_path / "res")])
    assert result.exit_code == 0, result.output
    exp = tmp_path / "res" / "tiny"
    plan = {r["run_id"]: r for r in read_json(exp / "plan.json")["runs"]}
    for run_id, p in plan.items():
        rows = read_metrics(exp / run_id / "metrics.jsonl")
        train = [r for r in rows if r["kind"] == "train"]
        evals = [r for r in rows if r["kind"] == "eval"]
        assert train[-1]["flops"] == p["total_flops"]  # cumulative FLOPs end on the plan's total
        assert train[-1]["step"] == p["steps"]
        assert train[-1]["lr"] == pytest.approx(TINY["train"]["lr"] * 0.1)  # reaches min_lr
        assert [r["budget_frac"] for r in evals] == [0.5, 1.0]  # same fractions for every run
        assert [r["eval_sequences"] for r in evals] == [4, 16]  # the last: final_eval_batches 4
        summary = read_json(exp / run_id / "summary.json")
        assert summary["state"] == "done" and summary["final_eval_loss"] == evals[-1]["eval_loss"]
        assert summary["final_eval_loss"] < 5.5  # it learned something (ln 256 = 5.55)
        if p["kind"] == "mod":
            assert summary["final_eval_loss_causal"] is not None
            assert 0 <= summary["predictor_acc"] <= 1 and 0 <= summary["predictor_acc_causal"] <= 1
            assert evals[-1]["predictor_recall_causal"] is not None
            assert train[-1]["routed_frac"] == [0.25]
            # calibrated over training steps: a threshold per routed layer, capacity beside the fraction
            assert summary["routed_frac_topk"] == [0.25] and len(summary["routed_frac_causal"]) == 1
            # 95% intervals over the 16 held-out sequences bracket the pooled figures
            lo, hi = summary["predictor_acc_causal_ci"]
            assert lo <= summary["predictor_acc_causal"] <= hi
            (lo, hi), = summary["routed_frac_causal_ci"]
            assert lo <= summary["routed_frac_causal"][0] <= hi
            assert all(len(r["threshold"]) == 1 and r["threshold"][0] != 0 for r in evals)
            assert train[-1]["predictor_grad_norm"] > 0


def test_the_final_thresholds_are_the_final_calibration(write_spec, tmp_path):
    """The checkpoint's thresholds are those of causal passes over the last training batches
    with the final weights (not the running mean): recalibrating the saved model changes
    nothing, and its last eval row reports them."""
    from modexp.data.tokens import TokenData
    from modexp.runs.sample import load_run
    from modexp.training.calibrate import calibrate_on_training

    spec = write_spec(variants={"mod": TINY["variants"]["mod"]})
    assert runner.invoke(app, ["run", str(spec), "--results", str(tmp_path / "r")]).exit_code == 0
    run_dir = next((tmp_path / "r" / "tiny").glob("*-mod-*"))
    model, run, step = load_run(run_dir)
    saved = [float(d.threshold) for d in model.decisions()]
    assert saved == read_metrics(run_dir / "metrics.jsonl")[-1]["threshold"]
    data = TokenData("builtin:pystdlib", 32, 0.05, run["plan"]["vocab"])
    assert calibrate_on_training(model, data, 0, step, (4, 4), "cpu") == saved


def test_kill_and_resume_is_bit_identical(write_spec, tmp_path):
    spec = write_spec(variants={"mod": TINY["variants"]["mod"]})
    run_sweep(spec, tmp_path / "straight")
    with pytest.raises(KeyboardInterrupt):  # checkpoint at step 5, rows 6 and 8 logged, killed at 8
        run_sweep(spec, tmp_path / "resumed", progress=_StopAt(8))
    report = run_sweep(spec, tmp_path / "resumed")
    assert report.outcomes == {"2e9-xs-mod-s0": "done"}
    a, b = (tmp_path / d / "tiny" / "2e9-xs-mod-s0" for d in ("straight", "resumed"))
    assert _rows(b) == _rows(a)  # same losses bit for bit, no duplicated or missing rows
    assert read_json(b / "summary.json")["final_eval_loss"] == read_json(a / "summary.json")["final_eval_loss"]


def test_rerun_of_finished_experiment_trains_nothing(write_spec, tmp_path):
    spec = write_spec()
    run_sweep(spec, tmp_path)
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("metrics.jsonl")}
    report = run_sweep(spec, tmp_path)
    assert set(report.outcomes.values()) == {"skipped"}
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("metrics.jsonl")} == stamps


def test_nan_marks_run_failed_and_sweep_goes_on(write_spec, tmp_path, monkeypatch):
    real = T.Trainer.train_step

    def poisoned(self):
        sums = real(self)
        if self.plan.kind == "mod" and self.step >= 3:
            sums["loss"] = sums["loss"] * float("nan")
        return sums

    monkeypatch.setattr(T.Trainer, "train_step", poisoned)
    result = runner.invoke(app, ["run", str(write_spec()), "--results", str(tmp_path)])
    assert result.exit_code == 1
    exp = tmp_path / "tiny"
    failed = read_json(exp / "2e9-xs-mod-s0" / "summary.json")
    assert failed["state"] == "failed" and "not finite" in failed["error"]
    assert (exp / "2e9-xs-mod-s0" / "error.log").exists()
    assert read_json(exp / "2e9-xs-vanilla-s0" / "summary.json")["state"] == "done"
    status = json.loads(runner.invoke(app, ["status", str(exp), "--json"]).stdout)
    assert {r["run_id"]: r["state"] for r in status} == {"2e9-xs-vanilla-s0": "done", "2e9-xs-mod-s0": "failed"}


def test_lock_refuses_a_second_process(write_spec, tmp_path):
    run_dir = tmp_path / "tiny" / "2e9-xs-mod-s0"
    run_dir.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_CREAT | os.O_RDWR); "
        "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)"),
        str(run_dir / ".lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        report = run_sweep(write_spec(), tmp_path)
        assert report.outcomes == {"2e9-xs-vanilla-s0": "done", "2e9-xs-mod-s0": "locked"}
        assert not (run_dir / "metrics.jsonl").exists()
    finally:
        holder.kill()
        holder.wait()


def test_only_selects_runs_by_glob(write_spec, tmp_path):
    report = run_sweep(write_spec(), tmp_path, only=["*-mod-*"])
    assert report.outcomes == {"2e9-xs-mod-s0": "done"}
    status = {r["run_id"]: r["state"] for r in json.loads(
        runner.invoke(app, ["status", str(tmp_path / "tiny"), "--json"]).stdout)}
    assert status == {"2e9-xs-vanilla-s0": "planned", "2e9-xs-mod-s0": "done"}


def test_changed_spec_refuses_to_mix_plans(write_spec, tmp_path):
    run_sweep(write_spec(), tmp_path, only=["*-vanilla-*"])
    changed = write_spec(train={**TINY["train"], "batch_size": 8})
    result = runner.invoke(app, ["run", str(changed), "--results", str(tmp_path)])
    assert result.exit_code == 2 and "train.batch_size" in result.output and "--move-aside" in result.output


def test_missing_data_source_is_refused_before_training(write_spec, tmp_path):
    spec = write_spec(data={"source": str(tmp_path / "nope.txt"), "seq_len": 32})
    result = runner.invoke(app, ["run", str(spec), "--results", str(tmp_path / "res")])
    assert result.exit_code == 2 and "data.source" in result.output and "nope.txt" in result.output
    assert not (tmp_path / "res").exists()  # nothing written


def test_predictor_lr_never_touches_the_lm(write_spec, tmp_path):
    """Two variants that differ only in predictor_lr train bit-identical LMs: the predictor's
    gradient norm is clipped apart from the LM's, and its optimiser shares nothing with it."""
    mod = TINY["variants"]["mod"]
    spec = write_spec(variants={"slow": {**mod, "predictor_lr": 1e-4},
                                "fast": {**mod, "predictor_lr": 3e-1}},
                      train={**TINY["train"], "grad_clip": 0.05})  # a clip that bites
    run_sweep(spec, tmp_path)
    exp = tmp_path / "tiny"
    slow, fast = (read_metrics(exp / f"2e9-xs-{v}-s0" / "metrics.jsonl") for v in ("slow", "fast"))
    pick = lambda rows, kind, keys: [[r[k] for k in keys] for r in rows if r["kind"] == kind]  # noqa: E731
    lm_keys = ["step", "lm_loss", "grad_norm", "routed_frac"]
    assert pick(slow, "train", lm_keys) == pick(fast, "train", lm_keys)
    assert pick(slow, "eval", ["eval_loss"]) == pick(fast, "eval", ["eval_loss"])
    # ...while the predictors did train differently, each clipped on its own norm
    assert pick(slow, "train", ["predictor_loss"]) != pick(fast, "train", ["predictor_loss"])
    assert all(r["predictor_grad_norm"] > 0 for r in slow if r["kind"] == "train")


def test_status_shows_causal_routing_against_capacity():
    from rich.console import Console

    from modexp.runs.status import print_status

    row = {"run_id": "r", "state": "done", "step": 3, "steps": 3, "progress": 1.0,
           "final_eval_loss": 1.0, "final_eval_loss_causal": 1.01, "error": None,
           "routed_frac_causal": [0.114, 0.05], "capacity": [0.125, 0.125],
           "decision_acc": 0.9512, "decision_acc_ci": [0.9431, 0.9593]}
    console = Console(record=True, width=250)
    print_status([row], console)
    text = console.export_text()
    assert "11.4%/12.5% 5.0%/12.5%!" in text  # only the 7.5-point miss flagged
    assert "0.951 [0.943, 0.959]" in text


def test_intervals_treat_sequences_as_the_units():
    from modexp.training.evaluation import seq_interval

    v = torch.tensor([0.9, 1.0] * 8)  # 16 sequences' accuracies
    lo, hi = seq_interval(v)
    half = 1.96 * v.std().item() / 4
    assert (lo, hi) == pytest.approx((0.95 - half, 0.95 + half))
    assert seq_interval(torch.tensor([0.9])) is None  # one sequence: no interval


def test_cpu_runs_keep_freed_memory_in_glibcs_heap(monkeypatch):
    """setup_context on the CPU sets glibc's mmap/trim thresholds (training/allocator.py)."""
    import platform

    from modexp.training.allocator import tune_cpu_allocator

    calls = []
    monkeypatch.setattr(T, "tune_cpu_allocator", lambda: calls.append("cpu") or True)
    T.setup_context("cpu")
    assert calls == ["cpu"]
    glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert tune_cpu_allocator() is glibc  # mallopt accepted both values (or no glibc: untouched)
