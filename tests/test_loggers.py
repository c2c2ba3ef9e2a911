"""Dashboards: TensorBoard event files hold the metrics.jsonl rows; a failing logger never fails a run."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from modexp.cli import app
from modexp.runs.loggers import scalars
from modexp.runs.metrics import read_metrics

pytest.importorskip("tensorboard")


def _run(write_spec, tmp_path, *args, **train):
    from tests.conftest import TINY

    spec = write_spec(budgets=[5e8], variants={"vanilla": {"kind": "vanilla"}},
                      train={**TINY["train"], **train})
    r = CliRunner().invoke(app, ["run", str(spec), "--results", str(tmp_path / "res"), "--device",
                                 "cpu", "-q", *args])
    assert r.exit_code == 0, r.output
    return next((tmp_path / "res" / "tiny").glob("*/run.json")).parent, r


def _events(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def test_tensorboard_events_match_metrics_jsonl(write_spec, tmp_path):
    run_dir, _ = _run(write_spec, tmp_path, "--logger", "tensorboard")
    rows = read_metrics(run_dir / "metrics.jsonl")
    acc = _events(run_dir)
    for kind in ("train", "eval"):
        want = [r for r in rows if r["kind"] == kind]
        for tag in (f"{kind}/{'train_loss' if kind == 'train' else 'eval_loss'}", f"{kind}/flops"):
            got = [(e.step, e.value) for e in acc.Scalars(tag)]
            assert [s for s, _ in got] == [r["step"] for r in want]
            assert [v for _, v in got] == pytest.approx([scalars(r)[tag] for r in want], rel=1e-6)
    spec_text = acc.Tensors("spec/text_summary")[0].tensor_proto.string_val[0].decode()
    assert '"name": "tiny"' in spec_text
    assert "run_id" in acc.Tensors("plan/text_summary")[0].tensor_proto.string_val[0].decode()


def test_spec_loggers_field_and_failing_logger(write_spec, tmp_path, monkeypatch):
    from modexp.runs import loggers

    calls = []

    def boom(self, row):
        calls.append(row["step"])
        raise OSError("disk full")

    monkeypatch.setattr(loggers.TensorBoardLogger, "log", boom)
    run_dir, r = _run(write_spec, tmp_path, loggers=["tensorboard"])
    err = r.output
    assert err.count("warning: tensorboard logger failed (OSError: disk full)") == 1
    assert len(calls) == 1  # dropped after the first failure
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["state"] == "done"
    rows = read_metrics(run_dir / "metrics.jsonl")
    assert rows[-1]["step"] == json.loads((run_dir / "run.json").read_text())["plan"]["steps"]


def test_unknown_or_missing_logger_exits_2(write_spec, tmp_path, monkeypatch):
    import importlib.util

    r = CliRunner().invoke(app, ["run", str(write_spec()), "--logger", "mlflow",
                                 "--results", str(tmp_path / "res")])
    assert r.exit_code == 2 and "--logger: 'mlflow' not allowed; allowed: tensorboard, wandb" in r.output
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "wandb" else real(n, *a))
    r = CliRunner().invoke(app, ["run", str(write_spec()), "--logger", "wandb",
                                 "--results", str(tmp_path / "res")])
    assert r.exit_code == 2 and "needs the `wandb` extra" in r.output


def test_wandb_offline(write_spec, tmp_path, monkeypatch):
    pytest.importorskip("wandb")  # a large package: not in the [test] extra
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    run_dir, r = _run(write_spec, tmp_path, "--logger", "wandb")
    assert "wandb logger failed" not in r.output
    assert list(run_dir.glob("wandb/offline-run-*"))
