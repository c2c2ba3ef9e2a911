"""What a GPU run needs, checked on CPU (issue 24): resume onto another device, one compiled
graph per run, no host sync in a training step."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from modexp.models.build import build_model
from modexp.runs import runner
from modexp.training.checkpoint import CKPT_FILE
from modexp.training import train as T

MOD = {"kind": "mod", "capacity": 0.25, "route_every": 2, "causal": "predictor"}


@pytest.fixture
def spec_file(tmp_path):
    """A one-model spec on a small text file; spec_file(train=..., variants=...) writes it."""
    data = tmp_path / "corpus.txt"
    data.write_text(Path(json.__file__).read_text() * 3)

    def _write(budget=2.2e7, variants=None, **train):
        spec = {"name": "gpu", "seeds": [0], "data": {"source": str(data), "seq_len": 16},
                "budgets": [budget], "models": [{"name": "xs", "n_layers": 2, "d_model": 16, "n_heads": 2}],
                "variants": variants or {"mod": MOD},
                "train": {"batch_size": 2, "lr": 3e-3, "eval_points": 2, "eval_batches": 1,
                          "log_every": 2, "checkpoint_every": 3, **train}}
        path = tmp_path / "spec.yaml"
        path.write_text(yaml.safe_dump(spec, sort_keys=False))
        return path

    return _write


def _trainer(p: runner.Prepared, run, ctx: T.Context, run_dir: Path) -> T.Trainer:
    """The Trainer runner.train_one builds, on ctx's device."""
    cfg = next(m for m in p.spec.models if m.name == run.model)
    torch.manual_seed(run.seed)
    model = build_model(cfg, p.spec.variants[run.variant], run.vocab, seq_len=run.seq_len, device="cpu")
    return T.Trainer(model, run, p.spec.train, p.data, runner._NullLogger(), run_dir / CKPT_FILE, ctx)


# ---------------------------------------------------------------- 1. resume on any device


@pytest.mark.filterwarnings("ignore:for .*copying from a non-meta")
def test_resume_restores_cpu_rng_whatever_device_the_run_trains_on(spec_file, tmp_path):
    """A checkpoint loaded for a run on another device than the CPU (here "meta", as the issue
    reproduced CUDA's failure) keeps its RNG state a CPU ByteTensor: loading it onto the run's
    device made torch.set_rng_state raise TypeError, so no GPU run could ever resume."""
    p = runner.prepare(spec_file(), tmp_path / "res")
    run, run_dir = p.runs[0], tmp_path / "ckpts"
    run_dir.mkdir()
    first = _trainer(p, run, T.Context(device=torch.device("cpu")), run_dir)
    first.train_step()
    first.save(1.0)
    want = torch.get_rng_state()
    torch.manual_seed(12345)  # anything else
    on_meta = _trainer(p, run, T.Context(device=torch.device("meta")), run_dir)
    assert on_meta.resume() == 1 and not on_meta.notes
    assert torch.equal(torch.get_rng_state(), want)
    assert all(t.device.type == "meta" for t in on_meta.raw.parameters())


# ---------------------------------------------------------------- 2. one graph per run


def test_every_run_of_a_sweep_compiles_one_graph_with_no_break(spec_file, tmp_path, request):
    """Three runs in one process through the Trainer (train.compile: true), vanilla and MoD
    with each learned causal mode, 16 micro-batches per step: each run compiles one graph,
    with no graph break and no recompile. Dynamo's recompile limit is set to 1, so a compile
    cache kept from an earlier run (no torch._dynamo.reset() per run) makes a later run fall
    back to eager: it then compiles nothing, and the count of 1 fails."""
    from torch._dynamo.testing import CompileCounter
    from torch._dynamo.utils import counters

    limit = "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"
    patched = torch._dynamo.config.patch(**{limit: 1})  # dynamo's own patch: monkeypatch's
    patched.__enter__()  # undo hid the option from later tests
    request.addfinalizer(lambda: patched.__exit__(None, None, None))
    variants = {"vanilla": {"kind": "vanilla"}, "mod": MOD,
                "aux": {**MOD, "causal": "aux_loss"}, "none": {**MOD, "causal": "none"}}
    p = runner.prepare(spec_file(budget=4e7, variants=variants, batch_size=16, micro_batch_size=1,
                                 compile=True), tmp_path / "res")
    assert p.runs and p.runs[0].steps >= 2
    for run in p.runs:
        counter = CompileCounter()
        counters.clear()
        ctx = T.Context(device=torch.device("cpu"), compile_backend=counter)
        summary = runner.train_one(p.spec, run, tmp_path / run.run_id, p.data, ctx)
        assert summary["state"] == "done"
        assert counter.frame_count == 1, (run.run_id, counter.frame_count)
        assert not counters["graph_break"], (run.run_id, dict(counters["graph_break"]))
    torch._dynamo.reset()


# ---------------------------------------------------------------- 3. no host sync per step


SYNCS = ("item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__")
"""Tensor methods that wait for the device on a GPU (a value or a copy to the host)."""


@pytest.mark.parametrize("variant", ["vanilla", "mod"])
def test_steps_between_logs_read_nothing_back_from_the_device(spec_file, tmp_path, monkeypatch, variant):
    """Every host read of a tensor during fit() is counted (Tensor.item/.tolist/.cpu/.numpy,
    bool(), int(), float()), except the data loader's, which builds batches from host arrays:
    a step that neither logs, evaluates nor checkpoints makes none (each step's loss .cpu()
    and each routed layer's int(threshold_steps) made one)."""
    import sys

    variants = {"vanilla": {"kind": "vanilla"}} if variant == "vanilla" else {"mod": MOD}
    p = runner.prepare(spec_file(budget=4e7, variants=variants, log_every=5, checkpoint_every=1000,
                                 eval_points=1), tmp_path / "res")
    run = p.runs[0]
    (tmp_path / "ckpts").mkdir()
    trainer = _trainer(p, run, T.Context(device=torch.device("cpu")), tmp_path / "ckpts")
    assert run.steps > 10
    seen: list[str] = []

    def counting(name):
        real = getattr(torch.Tensor, name)

        def wrapper(self, *a, **k):
            frame = sys._getframe(1)
            if not frame.f_code.co_filename.endswith("modexp/data/tokens.py"):
                seen.append(f"{name} at {frame.f_code.co_filename}:{frame.f_lineno}")
            return real(self, *a, **k)
        return wrapper

    for name in SYNCS:
        monkeypatch.setattr(torch.Tensor, name, counting(name))
    per_step, before = {}, [0]

    def on_step(step, loss):
        per_step[step], before[0] = seen[before[0]:], len(seen)

    trainer.on_step = on_step
    trainer.fit()
    monkeypatch.undo()
    quiet = [s for s in per_step if s % 5 and s not in run.eval_steps and s != run.steps]
    assert len(quiet) >= 8
    assert {s: per_step[s] for s in quiet if per_step[s]} == {}
    assert per_step[5]  # a logged step reads its numbers (the counting works)


# ---------------------------------------------------------------- 5. preemption, retention


VOLATILE = {"wall_time", "tokens_per_s", "flops_per_s", "mfu"}


def _rows(run_dir: Path) -> list[dict]:
    from modexp.runs.metrics import read_metrics

    return [{k: v for k, v in r.items() if k not in VOLATILE} for r in read_metrics(run_dir / "metrics.jsonl")]


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGUSR1"])
def test_a_stop_signal_checkpoints_and_the_same_command_resumes(spec_file, tmp_path, sig):
    """A real signal to a real `modexp run`: it saves the step it reached, exits 2 with one
    line saying so, leaves the run interrupted; the same command then finishes it with the
    rows of an uninterrupted run."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from modexp.runs.metrics import read_json
    from modexp.runs.runner import run_sweep

    spec = spec_file(budget=8e7, log_every=1, checkpoint_every=1000, eval_points=1)
    run_sweep(spec, tmp_path / "straight")
    (run_id,) = [d.name for d in (tmp_path / "straight" / "gpu").iterdir() if d.is_dir()]
    run_dir = tmp_path / "res" / "gpu" / run_id
    cmd = [sys.executable, "-m", "modexp", "run", str(spec), "--results", str(tmp_path / "res"), "-q"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if (run_dir / "metrics.jsonl").exists() and len(_rows(run_dir)) >= 3:
            break
        time.sleep(0.05)
    proc.send_signal(getattr(signal, sig))
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2, out
    assert f"stopped by {sig} at step" in out and "Traceback" not in out and out.count("\n  - ") == 1
    step = int(out.split("at step ")[1].split(",")[0])
    total = len(_rows(tmp_path / "straight" / "gpu" / run_id))
    assert 3 <= step < total  # stopped mid-run
    assert read_json(run_dir / "ckpt.sha256.json")["ckpt.pt"]["step"] == step
    assert (run_dir / "interrupted.json").exists() and not (run_dir / "summary.json").exists()
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert _rows(run_dir) == _rows(tmp_path / "straight" / "gpu" / run_id)


@pytest.mark.parametrize("keep", ["last", "none", "every:3"])
def test_checkpoint_retention_after_the_run(spec_file, tmp_path, keep):
    """train.keep: while training two checkpoints exist; once done, `last` keeps ckpt.pt,
    `none` none, `every:3` ckpt.pt and every 3rd step's, each checksummed and loadable; the
    run's fingerprint is the same whatever keep says (a finished sweep is not refused)."""
    from modexp.training import checkpoint
    from modexp.runs.metrics import read_json
    from modexp.runs.runner import run_sweep

    report = run_sweep(spec_file(keep=keep), tmp_path / "res")
    (run_id,) = report.outcomes
    run_dir = tmp_path / "res" / "gpu" / run_id
    ckpts = sorted(f.name for f in run_dir.glob("ckpt*.pt"))
    steps = read_json(run_dir / "summary.json")["step"]
    if keep == "none":
        assert ckpts == [] and not (run_dir / "ckpt.sha256.json").exists()
    else:
        want = ["ckpt.pt"] + ([f"ckpt.step{s}.pt" for s in range(3, steps + 1, 3)] if keep != "last" else [])
        assert ckpts == sorted(want)
        manifest = read_json(run_dir / "ckpt.sha256.json")
        assert sorted(manifest) == sorted(want)
        for name in want:
            assert checkpoint.file_sha256(run_dir / name) == manifest[name]["sha256"]
        if keep != "last":
            state, notes = checkpoint.load(run_dir / "ckpt.step3.pt", set_aside=False)
            assert state["step"] == 3 and not notes
    other = "last" if keep != "last" else "none"  # the other setting finds the run done
    again = run_sweep(spec_file(keep=other), tmp_path / "res")
    assert again.outcomes == {run_id: "skipped"}


# ---------------------------------------------------------------- 6. the GPU peak table


def test_gpu_peaks_are_looked_up_by_exact_name():
    """A name gets its own product's figure, never another's by substring: H100 NVL was given
    H100 SXM's 989, L40 got L4's 121, A10G the A10's 125."""
    from modexp.training.mfu import gpu_peak_flops

    assert gpu_peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert gpu_peak_flops("NVIDIA H100 NVL") == 835.5e12
    assert gpu_peak_flops("NVIDIA H100 PCIe") == 756e12
    assert gpu_peak_flops("NVIDIA H200") == 989e12
    assert gpu_peak_flops("NVIDIA L40") == 181.05e12 and gpu_peak_flops("NVIDIA L4") == 121e12
    assert gpu_peak_flops("NVIDIA B200") == 2250e12
    assert gpu_peak_flops(" NVIDIA A100-SXM4-80GB ") == 312e12
    for unknown in ("NVIDIA A10G", "NVIDIA H100 NVL 2", "H100", "nvidia h200", "NVIDIA L4 Super"):
        assert gpu_peak_flops(unknown) is None, unknown
    assert gpu_peak_flops("NVIDIA H200", "fp8") is None


def test_processes_on_one_node_scan_the_data_once(spec_file, tmp_path, monkeypatch):
    """Four processes preparing the same sweep at once (torchrun's ranks, a Slurm array's
    tasks): the dataset is hashed by one of them; the others wait, then read its hashes."""
    import threading
    import time

    from modexp.cache import CACHE_ENV
    from modexp.data import verify

    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    spec, reads, real = spec_file(), [], open

    def counting_open(f, *a, **k):
        if str(f).endswith("corpus.txt"):
            reads.append(threading.get_ident())
            time.sleep(0.5)  # a big dataset: the others arrive while it is read
        return real(f, *a, **k)

    monkeypatch.setattr(verify, "open", counting_open, raising=False)  # shadows the builtin
    errors = []

    def prepare():
        try:
            runner.prepare(spec, tmp_path / "res")
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=prepare) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and len(reads) == 1, (errors, len(reads))


# ---------------------------------------------------------------- 4. micro-batch per model


def test_each_model_runs_its_own_micro_batch_without_changing_the_run(spec_file, tmp_path):
    """models[].micro_batch_size overrides train.micro_batch_size for that size: the plan
    carries it, the Trainer accumulates over it, and it is not fingerprinted (a finished run
    is found done under another micro-batch); one that does not divide the size's batch is
    refused naming the model."""
    import yaml as _yaml

    from modexp.plan import plan_file
    from modexp.runs.runner import run_sweep
    from modexp.spec import SpecError

    path = spec_file(batch_size=4, micro_batch_size=4)
    spec = _yaml.safe_load(path.read_text())
    spec["models"].append({"name": "s", "n_layers": 2, "d_model": 32, "n_heads": 2, "micro_batch_size": 1})
    path.write_text(_yaml.safe_dump(spec))
    _, plan = plan_file(path)
    assert {r.model: r.micro_batch_size for r in plan.runs} == {"xs": 4, "s": 1}
    p = runner.prepare(path, tmp_path / "res")
    run = next(r for r in p.runs if r.model == "s")
    trainer = _trainer(p, run, T.Context(device=torch.device("cpu")), tmp_path)
    assert (trainer.micro, trainer.accum) == (1, 4)
    report = run_sweep(path, tmp_path / "res", only=[run.run_id])
    assert report.outcomes == {run.run_id: "done"}
    spec["models"][1]["micro_batch_size"] = 2
    path.write_text(_yaml.safe_dump(spec))
    assert run_sweep(path, tmp_path / "res", only=[run.run_id]).outcomes == {run.run_id: "skipped"}
    spec["models"][1]["micro_batch_size"] = 3
    path.write_text(_yaml.safe_dump(spec))
    with pytest.raises(SpecError, match=r"s\.micro_batch_size \(3\) must divide its batch_size \(4\)"):
        plan_file(path)
