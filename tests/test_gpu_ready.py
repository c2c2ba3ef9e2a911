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
from modexp.runs.checkpoint import CKPT_FILE
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


def test_every_run_of_a_sweep_compiles_one_graph_with_no_break(spec_file, tmp_path, monkeypatch):
    """Three runs in one process through the Trainer (train.compile: true), vanilla and MoD
    with each learned causal mode, 16 micro-batches per step: each run compiles one graph,
    with no graph break and no recompile. Dynamo's recompile limit is set to 1, so a compile
    cache kept from an earlier run (no torch._dynamo.reset() per run) makes a later run fall
    back to eager: it then compiles nothing, and the count of 1 fails."""
    from torch._dynamo.testing import CompileCounter
    from torch._dynamo.utils import counters

    limit = "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"
    monkeypatch.setattr(torch._dynamo.config, limit, 1)
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
