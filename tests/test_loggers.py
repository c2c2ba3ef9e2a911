"""Dashboards: TensorBoard event files hold the metrics.jsonl rows; a failing logger never fails a run."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from modexp.cli import app
from modexp.runs.loggers import scalars
from modexp.runs.metrics import read_metrics

pytest.importorskip("tensorboard")


def _run(write_spec, tmp_path, *args, variants=None, **train):
    from tests.conftest import TINY

    spec = write_spec(budgets=[5e8], variants=variants or {"vanilla": {"kind": "vanilla"}},
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
        for tag in (f"{kind}/loss", f"{kind}/flops"):
            got = [(e.step, e.value) for e in acc.Scalars(tag)]
            # the step axis is FLOPs (a 5e8 budget: unit 1, the FLOPs themselves), not steps
            assert [s for s, _ in got] == [r["flops"] for r in want]
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
    assert "wandb" not in r.output.lower()  # quiet without -v: no chatter, no deprecation


def _text(acc, name: str) -> str:
    return acc.Tensors(f"{name}/text_summary")[0].tensor_proto.string_val[0].decode()


def test_tags_have_no_doubled_prefix():
    train = scalars({"kind": "train", "step": 4, "flops": 8.0, "train_loss": 3.0, "lm_loss": 2.9,
                     "routed_frac": [0.25, 0.5]})
    ev = scalars({"kind": "eval", "step": 4, "flops": 8.0, "eval_loss": 2.5, "eval_loss_causal": 2.6,
                  "routed_frac_causal": [0.3], "routed_frac_causal_ci": [[0.2, 0.4]], "causal_ok": True})
    assert set(train) == {"train/step", "train/flops", "train/loss", "train/lm_loss",
                          "train/routed_frac/0", "train/routed_frac/1"}
    assert set(ev) == {"eval/step", "eval/flops", "eval/loss", "eval/loss_causal",
                       "eval/routed_frac_causal/0"}


def test_flops_unit_fits_int64_and_is_one_per_experiment():
    from modexp.runs.loggers import MAX_TB_STEP, flops_unit, unit_name

    assert flops_unit([5e8]) == 1 and flops_unit([1e9]) == 1
    assert flops_unit([2e9]) == 1000 and unit_name(1000) == "kFLOPs"
    assert flops_unit([1e11, 3e11, 1e12]) == 1000  # the largest budget decides, for every run
    for top in (1e12, 1e15, 3e19, 1e24, 1e30):
        unit = flops_unit([1e9, top])
        assert top / unit <= MAX_TB_STEP < top / (unit / 1000)  # the smallest unit that fits
        assert top // unit < 2**63


def test_tensorboard_mod_run_flops_steps_causal_loss_and_hparams(write_spec, tmp_path):
    """A MoD run at a 2e9 budget: steps in kFLOPs, the causal eval loss at the eval rows'
    FLOPs, the unit named in the run's text, and the plan's settings as hparams."""
    from tests.conftest import TINY

    spec = write_spec(budgets=[2e9], variants={"mod": TINY["variants"]["mod"]})
    r = CliRunner().invoke(app, ["run", str(spec), "--results", str(tmp_path / "res"), "--device",
                                 "cpu", "-q", "--logger", "tensorboard"])
    assert r.exit_code == 0, r.output
    run_dir = next((tmp_path / "res" / "tiny").glob("*/run.json")).parent
    rows = read_metrics(run_dir / "metrics.jsonl")
    acc = _events(run_dir)
    ev = [r for r in rows if r["kind"] == "eval"]
    assert len(ev) == 2
    for tag, key in (("eval/loss", "eval_loss"), ("eval/loss_causal", "eval_loss_causal")):
        got = acc.Scalars(tag)
        assert [e.step for e in got] == [r["flops"] // 1000 for r in ev]
        assert [e.value for e in got] == pytest.approx([r[key] for r in ev], rel=1e-6)
    train_steps = [e.step for e in acc.Scalars("train/lm_loss")]
    assert train_steps == [r["flops"] // 1000 for r in rows if r["kind"] == "train"]
    assert "kFLOPs" in _text(acc, "flops_unit") and "FLOPs // 1000" in _text(acc, "flops_unit")
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = acc.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hp = {k: v.string_value or v.number_value for k, v in start.session_start_info.hparams.items()}
    plan = json.loads((run_dir / "run.json").read_text())["plan"]
    assert hp["variant"] == "mod" and hp["size"] == "xs" and hp["family"] == plan["family"]
    assert hp["budget"] == 2e9 and hp["params"] == plan["params"] and hp["capacity"] == 0.25
    exp = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"])
    assert [m.name.tag for m in exp.experiment.metric_infos] == ["eval/loss", "eval/loss_causal"]


def test_tensorboard_resume_keeps_one_event_per_row(write_spec, tmp_path):
    """Killed after a checkpoint and resumed: each metrics row is one event, the checkpoint's
    own row included (purged from the next FLOPs step, not from the checkpoint's)."""
    from modexp.runs.runner import run_sweep
    from tests.conftest import StopAt, TINY

    spec = write_spec(budgets=[2e9], variants={"vanilla": {"kind": "vanilla"}},
                      train={**TINY["train"], "log_every": 1, "checkpoint_every": 5})
    with pytest.raises(KeyboardInterrupt):
        run_sweep(spec, tmp_path / "res", device="cpu", progress=StopAt(12), loggers=["tensorboard"])
    run_sweep(spec, tmp_path / "res", device="cpu", loggers=["tensorboard"])
    run_dir = next((tmp_path / "res" / "tiny").glob("*/run.json")).parent
    rows = [r for r in read_metrics(run_dir / "metrics.jsonl") if r["kind"] == "train"]
    got = [(e.step, e.value) for e in _events(run_dir).Scalars("train/lm_loss")]
    assert len(rows) > 12 and [s for s, _ in got] == [r["flops"] // 1000 for r in rows]
    assert [v for _, v in got] == pytest.approx([r["lm_loss"] for r in rows], rel=1e-6)


class _FakeRun:
    def __init__(self, calls):
        self.calls = calls

    def define_metric(self, name, **kw):
        self.calls.append(("define_metric", name, kw))

    def log(self, data, step=None):
        self.calls.append(("log", data, step))

    def finish(self):
        self.calls.append(("finish",))


def _fake_wandb(monkeypatch, calls):
    """A stand-in `wandb` module that records the calls the logger makes."""
    import sys
    import types

    mod = types.ModuleType("wandb")
    mod.Settings = lambda **kw: ("Settings", kw)
    mod.init = lambda **kw: (calls.append(("init", kw)), _FakeRun(calls))[1]
    monkeypatch.setitem(sys.modules, "wandb", mod)


@pytest.mark.parametrize("verbose", [False, True])
def test_wandb_calls_flops_axis_config_quiet(write_spec, tmp_path, monkeypatch, verbose):
    """Against a recording fake: every series is stepped by train/flops, eval rows carry it,
    the hparams are config keys, reinit is the current API, quiet settings unless -v."""
    from modexp.runs.loggers import WandbLogger

    calls = []
    _fake_wandb(monkeypatch, calls)
    spec = {"name": "tiny", "budgets": [2e9],
            "models": [{"name": "xs", "n_layers": 2, "d_model": 32, "n_heads": 2}]}
    plan = {"run_id": "2e9-xs-mod-s0", "model": "xs", "variant": "mod", "kind": "mod",
            "budget": 2e9, "family": "L2", "seed": 0, "flops_per_step": 10, "capacities": [None, 0.25]}
    lg = WandbLogger(tmp_path, plan["run_id"], spec, plan, 0, verbose)
    lg.log({"kind": "train", "step": 2, "flops": 20, "train_loss": 3.0, "lm_loss": 2.9})
    lg.log({"kind": "eval", "step": 2, "flops": 20, "eval_loss": 2.5, "eval_loss_causal": 2.6})
    lg.close()
    (_, init), *rest = calls
    assert init["reinit"] == "create_new" and init["resume"] == "allow"
    quiet = {"quiet": True, "silent": True, "show_info": False, "show_warnings": False}
    assert init["settings"] == ("Settings", {} if verbose else quiet)
    cfg = init["config"]
    assert (cfg["variant"], cfg["size"], cfg["family"], cfg["budget"], cfg["d_model"]) == \
        ("mod", "xs", "L2", 2e9, 32)
    assert cfg["plan"] == plan and cfg["spec"] == spec
    defs = [c for c in rest if c[0] == "define_metric"]
    assert defs == [("define_metric", "train/flops", {}),
                    ("define_metric", "train/*", {"step_metric": "train/flops"}),
                    ("define_metric", "eval/*", {"step_metric": "train/flops"})]
    logs = [c for c in rest if c[0] == "log"]
    assert logs[0][1]["train/lm_loss"] == 2.9 and logs[0][1]["train/flops"] == 20
    assert logs[1][1]["eval/loss"] == 2.5 and logs[1][1]["eval/loss_causal"] == 2.6
    assert logs[1][1]["train/flops"] == 20  # eval points sit at their FLOPs on the x-axis
    assert rest[-1] == ("finish",)
