"""Nothing mixed, nothing stuck, no tracebacks: fingerprints, failure states, checkpoints, errors."""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import random
import shutil
import signal
import stat
import sys
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from modexp.analysis.results import load_results
from modexp.cache import CACHE_ENV
from modexp.cli import app
from modexp.runs import fingerprint
from modexp.runs.metrics import read_json, read_metrics
from modexp.runs.runner import run_sweep
from modexp.spec import SpecError
from modexp.training import checkpoint
from modexp.training import train as T

from conftest import StopAt as _StopAt

runner = CliRunner()
VOLATILE = {"wall_time", "tokens_per_s", "flops_per_s", "mfu"}
MOD = {"kind": "mod", "capacity": 0.25, "route_every": 2, "causal": "predictor"}
TRAIN = {"batch_size": 2, "lr": 3e-3, "eval_points": 2, "eval_batches": 1, "log_every": 2,
         "checkpoint_every": 3}
RUN = "2.2e7-xs-mod-s0"


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))


@pytest.fixture
def fast(tmp_path):
    """A one-run spec of ~12 steps on a small text file; fast(**sections) writes a variant."""
    data = tmp_path / "corpus.txt"
    data.write_text(Path(json.__file__).read_text() * 3)

    def _write(file="spec.yaml", **sections):
        spec = {"name": "fast", "seeds": [0], "data": {"source": str(data), "seq_len": 16},
                "budgets": [2.2e7], "models": [{"name": "xs", "n_layers": 2, "d_model": 16, "n_heads": 2}],
                "variants": {"mod": MOD}, "train": dict(TRAIN)}
        for k, v in sections.items():
            spec[k] = {**spec[k], **v} if isinstance(spec.get(k), dict) else v
        path = tmp_path / file
        path.write_text(yaml.safe_dump(spec, sort_keys=False))
        return path

    return _write


def _cli(*args):
    r = runner.invoke(app, [str(a) for a in args])
    assert "Traceback" not in r.output
    return r


def _rows(run_dir):
    return [{k: v for k, v in r.items() if k not in VOLATILE} for r in read_metrics(run_dir / "metrics.jsonl")]


def _files(d: Path) -> set[str]:
    return {str(p.relative_to(d)) for p in d.rglob("*")} if d.exists() else set()


# ---------------------------------------------------------------- fingerprints


def test_changed_setting_is_refused_then_moved_aside(fast, tmp_path):
    res = tmp_path / "res"
    run_sweep(fast(), res)
    before = _files(res)
    plan_bytes = (res / "fast" / "plan.json").read_bytes()
    r = _cli("run", fast(train={"lr": 1e-3}), "--results", res)
    assert r.exit_code == 2 and f"{RUN}: differs in train.lr" in r.output and "--move-aside" in r.output
    assert _files(res) == before and (res / "fast" / "plan.json").read_bytes() == plan_bytes
    assert _cli("run", fast(train={"log_every": 3}), "--results", res).exit_code == 0  # display only
    r = _cli("run", fast(train={"lr": 1e-3}), "--results", res, "--move-aside")
    assert r.exit_code == 0, r.output
    aside = [d for d in res.iterdir() if d.name.startswith("fast.aside-")]
    assert len(aside) == 1 and (aside[0] / RUN / "summary.json").exists()
    assert read_json(res / "fast" / RUN / "run.json")["spec"]["train"]["lr"] == 1e-3
    assert read_json(res / "fast" / "plan.json")["spec"]["train"]["lr"] == 1e-3


def test_edited_data_of_the_same_size_is_caught(fast, tmp_path):
    spec = fast()
    run_sweep(spec, tmp_path / "res")
    corpus = tmp_path / "corpus.txt"
    text = corpus.read_text()
    corpus.write_text(text[::-1])  # same size, other content (and a new mtime)
    r = _cli("run", spec, "--results", tmp_path / "res")
    assert r.exit_code == 2 and "data.sha256" in r.output


def test_data_hash_is_cached_and_stdlib_records_python(tmp_path, monkeypatch):
    from modexp.data.corpus import resolve_source

    f = tmp_path / "d.txt"
    f.write_text("abc" * 100)
    first = fingerprint.data_fingerprint(resolve_source(str(f)))
    monkeypatch.setattr("builtins.open", None)  # a cache hit reads no data file
    assert fingerprint.data_fingerprint(resolve_source(str(f))) == first
    monkeypatch.undo()
    f.write_text("abd" * 100)
    assert fingerprint.data_fingerprint(resolve_source(str(f)))["sha256"] != first["sha256"]
    assert "python" not in first
    spec, plan = {"models": [{"name": "m"}], "variants": {"v": {}}, "train": {"log_every": 1},
                  "data": {}, "flops": {}}, {"model": "m", "variant": "v", "seed": 0}
    a = fingerprint.fingerprint(spec, plan, {"sha256": "x", "python": "3.11"})
    b = fingerprint.fingerprint(spec, plan, {"sha256": "x", "python": "3.12"})
    assert fingerprint.differences(a["fields"], b["fields"]) == ["data.python"]
    c = fingerprint.fingerprint(spec, {**plan, "seed": 1}, {"sha256": "x", "python": "3.11"})
    assert fingerprint.same_settings(a, c) and not fingerprint.same_settings(a, b)


def test_plot_refuses_to_average_seeds_of_other_settings(fast, tmp_path):
    run_sweep(fast(), tmp_path / "a")
    run_sweep(fast(seeds=[1], train={"lr": 1e-3}), tmp_path / "b")
    shutil.copytree(tmp_path / "b" / "fast" / "2.2e7-xs-mod-s1", tmp_path / "a" / "fast" / "2.2e7-xs-mod-s1")
    with pytest.raises(SpecError, match="fingerprints differ"):
        load_results(tmp_path / "a" / "fast")
    r = _cli("plot", tmp_path / "a" / "fast")
    assert r.exit_code == 2 and "2.2e7-xs-mod-s0 vs 2.2e7-xs-mod-s1" in r.output


# ---------------------------------------------------------------- failure states


def test_environment_failure_leaves_run_resumable(fast, tmp_path, monkeypatch):
    real = T.Trainer.train_step

    def oom(self):
        if self.step == 4:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(self)

    monkeypatch.setattr(T.Trainer, "train_step", oom)
    r = _cli("run", fast(), "--results", tmp_path)
    assert r.exit_code == 2 and "left interrupted" in r.output
    run_dir = tmp_path / "fast" / RUN
    assert not (run_dir / "summary.json").exists() and (run_dir / "interrupted.json").exists()
    st = json.loads(_cli("status", tmp_path / "fast", "--json").stdout)
    assert st[0]["state"] == "interrupted" and "OutOfMemoryError" in st[0]["error"]
    monkeypatch.setattr(T.Trainer, "train_step", real)
    assert _cli("run", fast(), "--results", tmp_path).exit_code == 0
    assert read_json(run_dir / "summary.json")["state"] == "done"
    assert not (run_dir / "interrupted.json").exists()


def test_failed_earlier_exits_1_until_retried(fast, tmp_path, monkeypatch):
    real = T.Trainer.train_step

    def poisoned(self):
        sums = real(self)
        sums["loss"] = sums["loss"] * float("nan")
        return sums

    monkeypatch.setattr(T.Trainer, "train_step", poisoned)
    assert _cli("run", fast(), "--results", tmp_path).exit_code == 1
    monkeypatch.setattr(T.Trainer, "train_step", real)
    r = _cli("run", fast(), "--results", tmp_path)
    assert r.exit_code == 1 and "failed earlier" in r.output and "--retry-failed" in r.output
    (tmp_path / "fast" / RUN / "error.log").write_text("")  # a stale empty log
    assert _cli("run", fast(), "--results", tmp_path, "--retry-failed").exit_code == 0
    assert not (tmp_path / "fast" / RUN / "error.log").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_cuda_writes_nothing(fast, tmp_path):
    for dev in ("cuda", "foo", "cpu:3"):
        r = _cli("run", fast(), "--results", tmp_path / "res", "--device", dev)
        assert r.exit_code == 2 and "--device" in r.output
    assert not (tmp_path / "res").exists()


# ---------------------------------------------------------------- checkpoints


def test_corrupt_checkpoint_falls_back_then_starts_over(fast, tmp_path, capfd):
    spec = fast()
    run_sweep(spec, tmp_path / "straight")
    want = _rows(tmp_path / "straight" / "fast" / RUN)
    run_dir = tmp_path / "res" / "fast" / RUN
    with pytest.raises(KeyboardInterrupt):  # checkpoints at 3 and 6; stopped at step 8
        run_sweep(spec, tmp_path / "res", progress=_StopAt(8))
    (run_dir / "ckpt.pt").write_bytes(b"garbage")
    (run_dir / ".ckpt.pt.tmp").write_bytes(b"half")  # a writer killed mid-save
    run_sweep(spec, tmp_path / "res")
    err = capfd.readouterr().err
    assert "ckpt.pt: its sha256 does not match" in err and "resuming from step 3" in err
    assert "removed .ckpt.pt.tmp" in err and not (run_dir / ".ckpt.pt.tmp").exists()
    assert _rows(run_dir) == want
    # both checkpoints bad: a clear start from zero, same result
    (run_dir / "summary.json").unlink()
    for f in ("ckpt.pt", "ckpt.prev.pt"):  # after the run only ckpt.pt is kept (train.keep)
        if (run_dir / f).exists():
            (run_dir / f).write_bytes((run_dir / f).read_bytes()[:100])
    run_sweep(spec, tmp_path / "res")
    assert "starting over from step 0" in capfd.readouterr().err
    assert _rows(run_dir) == want


def test_disk_full_during_checkpoint_is_one_line_and_resumable(fast, tmp_path, monkeypatch):
    real = checkpoint._write_file

    def full(path, state):
        real(path, state)  # the disk fills half way through the checkpoint
        os.truncate(path, path.stat().st_size // 2)
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(checkpoint, "_write_file", full)
    r = _cli("run", fast(), "--results", tmp_path)
    assert r.exit_code == 2 and "No space left on device" in r.output and "resumable" in r.output
    run_dir = tmp_path / "fast" / RUN
    assert not list(run_dir.glob(".*.tmp")) and not (run_dir / "ckpt.pt").exists()
    assert "No space left" in read_json(run_dir / "interrupted.json")["error"]
    monkeypatch.setattr(checkpoint, "_write_file", real)
    assert _cli("run", fast(), "--results", tmp_path).exit_code == 0


# ---------------------------------------------------------------- one line, exit 2


def test_bad_files_and_flags_are_one_line_errors(fast, tmp_path):
    spec = fast(variants={"mod": MOD, "vanilla": {"kind": "vanilla"}})  # bench needs both kinds
    res = tmp_path / "res"
    run_sweep(spec, res, only=[RUN])
    exp, run_dir = res / "fast", res / "fast" / RUN
    assert stat.S_IMODE((run_dir / "summary.json").stat().st_mode) == 0o666 & ~_umask()
    assert not (run_dir / "ckpt.prev.pt").exists()  # train.keep: last, the final checkpoint only
    good = (run_dir / "ckpt.pt").read_bytes()
    for bad in (b"", good[: len(good) // 2], b"\x00garbage" * 50):
        (run_dir / "ckpt.pt").write_bytes(bad)
        for args in (["sample", run_dir, "--prompt", "ab", "--max-new-tokens", "2"],
                     ["bench", run_dir, "--repeats", "1", "--new-tokens", "2", "--no-train"]):
            r = _cli(*args)
            assert r.exit_code == 2 and "no usable checkpoint" in r.output, (bad[:10], r.output)
    (run_dir / "ckpt.pt").write_bytes(good)
    assert _cli("bench", run_dir, "--batch-size", "0").exit_code == 2
    for cmd in (["sample", run_dir, "--prompt", "a"], ["bench", run_dir]):
        r = _cli(*cmd, "--device", "foo")
        assert r.exit_code == 2 and "'foo' is not a device" in r.output
    # garbled run files: status shows the table and exits 2; run recovers the summary
    (run_dir / "summary.json").write_text("{not json")
    r = _cli("status", exp)
    assert r.exit_code == 2 and "summary.json is not valid JSON" in r.output
    assert _cli("run", spec, "--results", res, "--only", RUN).exit_code == 0
    assert read_json(run_dir / "summary.json")["state"] == "done"
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    (run_dir / "metrics.jsonl").write_text("\n".join(lines[:2] + ["%%garbage"] + lines[2:]) + "\n")
    r = _cli("status", exp)
    assert r.exit_code == 2 and "metrics.jsonl: line 3 is not valid JSON" in r.output
    # bad specs and results folders
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(bytes(range(256)))
    assert "not a text file" in _cli("plan", binary).output
    assert "not a safe folder name" in _cli("run", fast("dots.yaml", name=".."), "--results", res).output
    r = _cli("run", spec, "--results", spec)
    assert r.exit_code == 2 and "is a file" in r.output


def test_plot_before_any_run_finished(fast, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        run_sweep(fast(), tmp_path, progress=_StopAt(4))
    r = _cli("plot", tmp_path / "fast")
    assert r.exit_code == 2 and "no run has finished yet" in r.output
    assert not (tmp_path / "fast" / "plots").exists()


def test_write_error_is_one_line_and_verbose_shows_traceback(fast, tmp_path, monkeypatch):
    import modexp.runs.runner as R

    def denied(path, obj):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(R, "write_json_atomic", denied)
    r = _cli("run", fast(), "--results", tmp_path)
    assert r.exit_code == 2 and "Permission denied" in r.output
    r = runner.invoke(app, ["-v", "run", str(fast()), "--results", str(tmp_path)])
    assert r.exit_code == 2 and "Traceback" in r.output


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


# ---------------------------------------------------------------- chaos


def _chaos_child(spec: str, results: str, kill_at: int) -> None:
    """Train, SIGKILLing this process at the kill_at-th write (mid-file for checkpoints)."""
    import modexp.training.checkpoint as C
    import modexp.runs.metrics as M

    torch.set_num_threads(1)
    count = [0]

    def tick():
        count[0] += 1
        if count[0] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    real_write, real_log, real_manifest = C._write_file, M.MetricsWriter.log, C.write_json_atomic

    def write_file(path, state):
        real_write(path, state)  # half the checkpoint on disk when the kill comes
        os.truncate(path, path.stat().st_size // 2)
        tick()
        return real_write(path, state)

    def log(self, row):
        tick()
        real_log(self, row)

    def manifest(path, obj):
        tick()  # after the renames, before the checksums are recorded
        real_manifest(path, obj)

    C._write_file, M.MetricsWriter.log, C.write_json_atomic = write_file, log, manifest
    run_sweep(spec, results)
    os._exit(0)


def test_chaos_sigkill_at_random_moments_then_resume_is_identical(fast, tmp_path):
    spec = fast(variants={"mod": MOD, "vanilla": {"kind": "vanilla"}})
    run_sweep(spec, tmp_path / "straight")
    ctx = multiprocessing.get_context("fork")
    rng, kills = random.Random(14), 0
    for _ in range(5):
        p = ctx.Process(target=_chaos_child, args=(str(spec), str(tmp_path / "chaos"), rng.randint(1, 12)))
        p.start()
        p.join(120)
        assert p.exitcode in (-signal.SIGKILL, 0)
        kills += p.exitcode == -signal.SIGKILL
    assert kills >= 3  # most attempts were really killed mid-sweep
    run_sweep(spec, tmp_path / "chaos")
    for run_id in ("2.2e7-xs-mod-s0", "2.2e7-xs-vanilla-s0"):
        a, b = (tmp_path / d / "fast" / run_id for d in ("straight", "chaos"))
        assert _rows(b) == _rows(a)
        sa, sb = read_json(a / "summary.json"), read_json(b / "summary.json")
        assert sb["final_eval_loss"] == sa["final_eval_loss"] and sb["state"] == "done"


if sys.platform != "linux":  # fork + SIGKILL semantics
    test_chaos_sigkill_at_random_moments_then_resume_is_identical = pytest.mark.skip(
        test_chaos_sigkill_at_random_moments_then_resume_is_identical)
