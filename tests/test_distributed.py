"""Scaling out on CPU (gloo): torchrun/DDP runs match one process, resume after a kill, sharded sweeps.

The torchrun tests start real 2-process jobs (`python -m torch.distributed.run --standalone`),
one thread each, on the tiny spec of conftest; a job takes a few seconds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from modexp.cli import app
from modexp.plan import plan_file
from modexp.runs.metrics import read_json, read_metrics
from modexp.runs.runner import prepare, run_sweep, select_runs
from modexp.spec import SpecError

from conftest import TINY

SPEC = {**TINY, "name": "ddp"}  # vanilla and MoD: two runs in turn under one process group
LOSSES = ("train_loss", "lm_loss", "predictor_loss", "grad_norm", "eval_loss", "eval_loss_causal")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # 2 processes on 2 cores: no oversubscription


def _write(path: Path, spec: dict) -> Path:
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def torchrun(spec: Path, results: Path, script: list[str] | None = None) -> subprocess.Popen:
    """Start `torchrun --nproc_per_node 2 --standalone -m modexp run SPEC --results DIR`."""
    target = script or ["-m", "modexp"]
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                             "--standalone", *target, "run", str(spec), "--results", str(results)],
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen, timeout: float = 120) -> str:
    """Wait for a torchrun job; return its output."""
    out, _ = proc.communicate(timeout=timeout)
    return out


@contextmanager
def one_thread():
    """In-process reference runs with the same kernels as the OMP_NUM_THREADS=1 workers."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def run_ids(spec: Path) -> list[str]:
    return [r.run_id for r in plan_file(spec)[1].runs]


def curve(run_dir: Path) -> list[dict]:
    """Rows without wall-clock fields."""
    return [{k: v for k, v in r.items() if k not in ("wall_time", "tokens_per_s")}
            for r in read_metrics(run_dir / "metrics.jsonl")]


def assert_same_curve(a: list[dict], b: list[dict], tol: float, keys=LOSSES) -> None:
    """Same rows (kind, step, FLOPs, lr) in the same order; `keys` within tol (relative)."""
    assert [(r["kind"], r["step"], r["flops"]) for r in a] == [(r["kind"], r["step"], r["flops"]) for r in b]
    for x, y in zip(a, b):
        if x["kind"] == "train":  # eval rows carry no lr
            assert x["lr"] == pytest.approx(y["lr"], rel=1e-12)
        for k in keys:
            if x.get(k) is not None:
                assert x[k] == pytest.approx(y[k], rel=tol, abs=tol), (x["kind"], x["step"], k)


def assert_one_set_of_rows(run_dir: Path) -> None:
    """One metrics file, each (kind, step) row once, the run done at the plan's FLOPs."""
    assert sorted(p.name for p in run_dir.glob("*metrics*")) == ["metrics.jsonl"]
    keys = [(r["kind"], r["step"]) for r in read_metrics(run_dir / "metrics.jsonl")]
    assert len(keys) == len(set(keys))
    plan = read_json(run_dir / "run.json")["plan"]
    summary = read_json(run_dir / "summary.json")
    assert summary["state"] == "done" and summary["flops"] == plan["total_flops"]
    assert summary["step"] == plan["steps"] and keys[-1] == ("eval", plan["steps"])


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    """One uninterrupted 2-process run of SPEC: (spec path, experiment folder, output)."""
    return uninterrupted(tmp_path_factory.mktemp("ddp"), SPEC)


def uninterrupted(root: Path, spec: dict) -> tuple[Path, Path, str]:
    """A 2-process job of spec to its end in root: (spec path, experiment folder, output)."""
    path = _write(root / "spec.yaml", spec)
    proc = torchrun(path, root / "res")
    out = finish(proc)
    assert proc.returncode == 0, out
    return path, root / "res" / spec["name"], out


def test_two_processes_match_one(ddp_run, tmp_path):
    spec, exp, out = ddp_run
    ids = run_ids(spec)
    for run_id in ids:  # rank 0 alone reports: one line per run, no second progress display
        assert out.count(f"done {run_id}") == 1
    assert out.count("results in") == 1  # (no bars in a piped log: plain status lines instead)
    # One process in micro-batches of 2 computes what each of the 2 ranks does: the same
    # curve (bit for bit here). On whole batches of 4 the kernels round differently, and
    # MoD's top-k turns rounding into other routing choices now and then.
    micro = _write(tmp_path / "micro.yaml", {**SPEC, "train": {**SPEC["train"], "micro_batch_size": 2}})
    with one_thread():
        run_sweep(micro, tmp_path / "micro")
        run_sweep(spec, tmp_path / "whole")
    for run_id in ids:
        assert_one_set_of_rows(exp / run_id)
        ddp = curve(exp / run_id)
        assert_same_curve(ddp, curve(tmp_path / "micro" / "ddp" / run_id), tol=1e-5)
        # largest gaps seen: vanilla < 1e-4, MoD 0.011 train loss (of ~3.5), 1e-3 eval loss
        assert_same_curve(ddp, curve(tmp_path / "whole" / "ddp" / run_id), tol=0.03,
                          keys=("train_loss", "eval_loss", "eval_loss_causal"))
        whole = read_json(tmp_path / "whole" / "ddp" / run_id / "summary.json")["final_eval_loss"]
        assert read_json(exp / run_id / "summary.json")["final_eval_loss"] == pytest.approx(whole, abs=5e-3)


def _children(pid: int) -> list[int]:
    """Direct children of pid (torchrun starts each worker in its own session)."""
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def test_resume_after_kill_under_torchrun(ddp_run, tmp_path):
    spec, straight, _ = ddp_run
    first = run_ids(spec)[0]
    kill_and_resume(spec, tmp_path / "ddp" / first / "ckpt.pt")
    for run_id in run_ids(spec):
        assert_one_set_of_rows(tmp_path / "ddp" / run_id)
        assert_same_curve(curve(tmp_path / "ddp" / run_id), curve(straight / run_id), tol=1e-6)


def kill_and_resume(spec: Path, ckpt: Path) -> None:
    """Start a 2-process job of spec into the results folder two levels above ckpt, kill
    every process of it (SIGKILL) once ckpt exists, then run the same command to the end."""
    results = ckpt.parents[2]
    proc, deadline = torchrun(spec, results), time.time() + 90
    while not ckpt.exists():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[0]
        time.sleep(0.01)
    for pid in [*_children(proc.pid), proc.pid]:  # a hard kill of every process of the job
        os.kill(pid, signal.SIGKILL)
    proc.communicate()
    assert not (ckpt.parent / "summary.json").exists()  # killed mid-run
    rerun = torchrun(spec, results)
    out = finish(rerun)
    assert rerun.returncode == 0, out


def test_one_rank_failing_neither_hangs_nor_desyncs(tmp_path):
    # Rank 1 alone: a NaN loss in the first run (every rank must then fail it at the same step
    # and go on together), an exception in the second (the job must end, not hang).
    script = tmp_path / "inject.py"
    script.write_text(
        "from modexp.training import train as T\nfrom modexp.cli import app\nreal = T.Trainer.train_step\n"
        "def step(self):\n    sums = real(self)\n    if self.ctx.rank == 1 and self.step >= 3:\n"
        "        if self.plan.kind == 'vanilla':\n            sums['loss'] = sums['loss'] * float('nan')\n"
        "        else:\n            raise RuntimeError('rank 1 broke')\n    return sums\n"
        "T.Trainer.train_step = step\napp()\n")
    # micro-batches of 1: each rank accumulates 2 under DDP's no_sync
    spec = _write(tmp_path / "spec.yaml", {**SPEC, "train": {**SPEC["train"], "micro_batch_size": 1}})
    vanilla, mod = (next(r for r in run_ids(spec) if f"-{v}-" in r) for v in ("vanilla", "mod"))
    assert run_ids(spec).index(vanilla) == 0
    proc = torchrun(spec, tmp_path, script=[str(script)])
    out = finish(proc, timeout=90)
    assert proc.returncode != 0, out
    failed = read_json(tmp_path / "ddp" / vanilla / "summary.json")
    assert failed["state"] == "failed" and "step 4" in failed["error"], out  # first logged step
    assert not (tmp_path / "ddp" / mod / "summary.json").exists()  # interrupted: resumable
    assert "rank 1 broke" in out


def test_batch_must_split_over_the_processes(tmp_path, monkeypatch):
    spec = _write(tmp_path / "spec.yaml", SPEC)
    with pytest.raises(SpecError, match=r"batch_size \(4\).*3 processes"):
        prepare(spec, tmp_path, world=3)
    odd = _write(tmp_path / "odd.yaml", {**SPEC, "train": {**SPEC["train"], "batch_size": 12,
                                                            "micro_batch_size": 4}})
    with pytest.raises(SpecError, match=r"micro_batch_size \(4\).*\[1, 2, 3, 6\]"):
        prepare(odd, tmp_path, world=2)
    prepare(odd, tmp_path, world=3)  # 4 per process: one micro-batch each
    # the CLI refuses before training (exit 2); only rank 0 prints the problem
    monkeypatch.setenv("WORLD_SIZE", "3")
    for rank, shown in (("0", True), ("1", False)):
        monkeypatch.setenv("RANK", rank)
        result = CliRunner().invoke(app, ["run", str(spec), "--results", str(tmp_path / "res")])
        assert result.exit_code == 2 and ("3 processes" in result.output) == shown
    assert not (tmp_path / "res").exists()


def test_four_shards_run_the_sweep_once(tmp_path):
    with one_thread():  # two threads on two busy cores spin-wait for each other: 20x slower
        _four_shards(tmp_path)


def _four_shards(tmp_path):
    spec = _write(tmp_path / "spec.yaml", {**SPEC, "budgets": [1e9], "models": [
        *TINY["models"], {"name": "xxs", "n_layers": 2, "d_model": 16, "n_heads": 2}]})
    plan = plan_file(spec)[1]
    everything = [r.run_id for r in plan.runs]
    assert len(everything) == 4  # 2 models x 2 variants
    for n in range(1, 7):  # any n: disjoint shards, together every run exactly once
        ids = [r.run_id for i in range(n) for r in select_runs(plan, shard=(i, n))]
        assert sorted(ids) == sorted(everything)
    # four invocations sharing one folder, as a job array would run them (one through the CLI)
    result = CliRunner().invoke(app, ["run", str(spec), "--results", str(tmp_path), "--shard", "0/4"])
    assert result.exit_code == 0, result.output
    outcomes = {everything[0]: "done"}
    for i in (1, 2, 3):
        report = run_sweep(spec, tmp_path, shard=(i, 4))
        assert list(report.outcomes.values()) == ["done"]
        outcomes |= report.outcomes
    assert outcomes == {r: "done" for r in everything}
    for r in everything:
        assert_one_set_of_rows(tmp_path / "ddp" / r)
    assert run_sweep(spec, tmp_path, shard=(4, 5)).outcomes == {}  # an array larger than the sweep
    unsharded = run_sweep(spec, tmp_path)  # the whole sweep is there already: nothing redone
    assert unsharded.outcomes == {r: "skipped" for r in everything}
    status = CliRunner().invoke(app, ["status", str(tmp_path / "ddp"), "--json"])
    assert {r["state"] for r in json.loads(status.stdout)} == {"done"}


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU machine main() benchmarks for minutes")
def test_cuda_smoke_script_without_cuda(capsys):
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "cuda_smoke.py"
    spec = importlib.util.spec_from_file_location("cuda_smoke", path)
    smoke = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(smoke)
    assert smoke.main([]) == 0 and "no CUDA device" in capsys.readouterr().out
    with one_thread():  # the tiny CPU config through the same code (DDP phase: manual runs)
        assert smoke.main(["--cpu-dry-run", "--no-ddp", "--warmup", "1", "--repeats", "2"]) == 0
    out = capsys.readouterr().out
    assert "vanilla compile=off" in out and "mod compile=off" in out and "MFU" in out
