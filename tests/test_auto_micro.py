"""Memory in the plan (`plan --device-memory`, `--processes`) and `micro_batch_size: auto`:
the spec accepts it, the plan shows it, `modexp run` resolves it once per run (the search on
a fake `fits`, the CPU's choice by the estimate) and records it in run.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from modexp import flops as F
from modexp import memory as M
from modexp.cli import app
from modexp.plan import Target, plan_file
from modexp.spec import SpecError

from test_gpu_ready import MOD, spec_file  # noqa: F401 (the fixture: a one-model spec)


def _with(path: Path, **models0) -> Path:
    """The spec at `path` with its model's fields updated and a second size added."""
    spec = yaml.safe_load(path.read_text())
    spec["models"][0].update(models0)
    spec["models"].append({"name": "s", "n_layers": 2, "d_model": 32, "n_heads": 2, "batch_size": 6})
    path.write_text(yaml.safe_dump(spec))
    return path


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


# ---------------------------------------------------------------- the search


def test_halving_search_tries_the_candidate_then_about_half():
    tried = []

    def fits(n):
        tried.append(n)
        return n <= 5

    assert M.halving_search(24, 24, fits) == 3 and tried == [24, 12, 6, 3]
    tried.clear()
    assert M.halving_search(24, 8, fits) == 4 and tried == [8, 4]
    assert M.halving_search(12, 12, lambda n: False) == 0


def test_micro_batch_by_estimate_is_the_largest_divisor_that_fits():
    arch = F.Arch(n_layers=2, d_model=64, n_heads=4, d_ff=256, vocab=512)
    cost = {m: M.training_memory(arch, 64, m).total for m in M.divisors(12)}
    assert M.divisors(12) == [12, 6, 4, 3, 2, 1]
    free = cost[4] + 1  # 4 fits, 6 does not
    assert M.micro_batch_by_estimate(arch, 64, 12, free) == 4
    assert M.micro_batch_by_estimate(arch, 64, 12, 2 * free, processes=2) == 4  # RAM shared by 2
    assert M.micro_batch_by_estimate(arch, 64, 12, cost[1] - 1) == 0


def test_parse_size():
    assert M.parse_size("80GB") == 80 * 10 ** 9 and M.parse_size("24GiB") == 24 * 2 ** 30
    assert M.parse_size("141gb") == 141 * 10 ** 9 and M.parse_size("1.5 TiB") == int(1.5 * 2 ** 40)
    for bad in ("80", "GB", "-1GB", "0GiB", "eightyGB", "nanGB", "80 GX"):
        assert M.parse_size(bad) is None, bad


# ---------------------------------------------------------------- the spec and the plan


def test_auto_is_accepted_wherever_a_micro_batch_is_and_other_strings_are_refused(spec_file):
    _, plan = plan_file(_with(spec_file(batch_size=4, micro_batch_size="auto"), micro_batch_size="auto"))
    assert {r.micro_batch_size for r in plan.runs} == {"auto"}
    assert all(r.memory["micro_batch"] == r.batch_size for r in plan.runs)  # the most auto may take
    for bad in ("big", "4", 0):
        with pytest.raises(SpecError) as e:
            plan_file(spec_file(micro_batch_size=bad))
        assert e.value.problems == [f"train.micro_batch_size: must be a whole number >= 1 or 'auto', "
                                    f"got {bad!r}"]


@pytest.mark.parametrize("bad", ["sometimes", 3, None])
def test_prefetch_is_true_false_or_auto(spec_file, bad):
    with pytest.raises(SpecError) as e:
        plan_file(spec_file(prefetch=bad))
    assert e.value.problems == [f"train.prefetch: must be true, false or 'auto', got {bad!r}"]


def test_plan_for_a_device_estimates_in_bf16_and_warns_per_run_that_will_not_fit(spec_file):
    path = spec_file(batch_size=4, micro_batch_size=2)
    r = invoke("plan", path, "--device-memory", "80GB", "--json")
    assert r.exit_code == 0, r.output
    runs = json.loads(r.stdout)
    assert {x["memory"]["dtype"] for x in runs} == {"bfloat16"} and "will not fit" not in r.output
    small = invoke("plan", path, "--device-memory", "64KiB")
    assert small.exit_code == 0, small.output
    lines = [ln for ln in small.stderr.splitlines() if "will not fit" in ln]
    assert len(lines) == len(runs) and all("micro-batch 2" in ln and "would fit with:" in ln
                                           for ln in lines), small.stderr
    assert "micro-batch" in small.stdout and "memory" in small.stdout  # the table's columns


def test_plan_for_processes_splits_the_batch_and_shards_under_fsdp(spec_file):
    path = spec_file(batch_size=4, parallel="fsdp")
    _, one = plan_file(path, target=Target(80 * 10 ** 9, 1))
    _, four = plan_file(path, target=Target(80 * 10 ** 9, 4))
    a, b = one.runs[0].memory, four.runs[0].memory
    assert (a["micro_batch"], b["micro_batch"]) == (4, 1) and (a["shards"], b["shards"]) == (1, 4)
    assert b["optimizer"] == -(-a["optimizer"] // 4) and b["gathered"] > 0


def test_plan_for_a_device_gives_autos_choice(spec_file):
    path = spec_file(micro_batch_size="auto", batch_size=8)
    spec, plan = plan_file(path)
    arch = F.arch_from_config(spec.models[0], spec.variants["mod"], plan.runs[0].vocab)
    free = M.training_memory(arch, 16, 2, "bfloat16").total  # 2 fits, 4 does not
    _, on = plan_file(path, target=Target(free))
    assert [(r.micro_batch_auto, r.memory["micro_batch"]) for r in on.runs] == [(2, 2)]
    r = invoke("plan", path, "--device-memory", f"{free}B")
    assert "auto (2)" in r.stdout, r.output


@pytest.mark.parametrize("flags, wanted", [
    (("--device-memory", "80"), "--device-memory: expected a size such as 80GB"),
    (("--device-memory", "lots"), "--device-memory: expected a size such as 80GB"),
    (("--processes", "3"), "--processes: 3 processes do not split model xs's batch_size 4"),
    (("--processes", "0"), "--processes"),
])
def test_bad_plan_flags_are_one_line_and_exit_2(spec_file, flags, wanted):
    r = invoke("plan", spec_file(batch_size=4), *flags)
    assert r.exit_code == 2 and wanted in r.stderr and "Traceback" not in r.output, r.output
    assert sum(ln.startswith("  - ") for ln in r.stderr.splitlines()) == 1 and r.stdout == ""


# ---------------------------------------------------------------- modexp run


def test_run_resolves_auto_by_the_estimate_on_the_cpu_and_records_it(spec_file, tmp_path,
                                                                      monkeypatch):
    """auto on the CPU: the largest divisor whose estimate fits the free RAM (faked here to
    hold 2 of 4 sequences), trained as that micro-batch bit for bit, recorded in run.json;
    a resume under another free memory may choose another (execution only)."""
    from modexp.runs.runner import run_sweep
    from modexp.spec.load import load_spec

    path = spec_file(batch_size=4, micro_batch_size="auto")
    spec = load_spec(path)
    _, plan = plan_file(path)
    arch = F.arch_from_config(spec.models[0], spec.variants["mod"], plan.runs[0].vocab)
    two = M.training_memory(arch, 16, 2).total
    monkeypatch.setattr(M, "cpu_available_bytes", lambda: two + 1)
    res = tmp_path / "res"
    assert run_sweep(path, res).outcomes == {plan.runs[0].run_id: "done"}
    run_dir = res / "gpu" / plan.runs[0].run_id
    record = json.loads((run_dir / "run.json").read_text())["plan"]
    assert (record["micro_batch_size"], record["micro_batch_auto"]) == ("auto", 2)
    fixed = spec_file(batch_size=4, micro_batch_size=2)
    assert run_sweep(fixed, tmp_path / "fixed").outcomes == {plan.runs[0].run_id: "done"}
    rows = lambda d: [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    losses = lambda d: [(x["step"], x.get("train_loss"), x.get("eval_loss")) for x in rows(d)]  # noqa: E731
    assert losses(run_dir) == losses(tmp_path / "fixed" / "gpu" / plan.runs[0].run_id)
    monkeypatch.setattr(M, "cpu_available_bytes", lambda: M.training_memory(arch, 16, 1).total - 1)
    with pytest.raises(SpecError, match="micro_batch_size auto: not even one sequence"):
        run_sweep(spec_file(batch_size=4, micro_batch_size="auto"), tmp_path / "none")


def test_resolve_auto_tries_once_per_size_and_takes_the_trial_on_cuda(monkeypatch, spec_file,
                                                                     tmp_path):
    """On CUDA the estimate's choice is tried and halved on out-of-memory (a fake trial here),
    once per (model, variant, seq_len, world) in a sweep process; the run as trained carries
    the chosen size."""
    import torch

    from modexp.runs import runner
    from modexp.training import autobatch
    from modexp.training.train import Context

    p = runner.prepare(spec_file(micro_batch_size="auto", batch_size=8), tmp_path / "res")
    run = p.runs[0]
    tried = []
    monkeypatch.setattr(autobatch, "step_fits", lambda *a: tried.append(a[4]) or a[4] <= 2)
    ctx = Context(device=torch.device("cuda", 0))  # only its type is read: no GPU used
    p.auto[run.run_id] = 8
    said = []
    trained = runner.resolve_auto(p, run, ctx, said.append)
    assert (trained.micro_batch_size, trained.micro_batch_auto, tried) == (2, 2, [8, 4, 2])
    assert runner.resolve_auto(p, run, ctx, said.append).micro_batch_size == 2 and tried == [8, 4, 2]
    assert "micro_batch_size auto: 2 sequences per forward pass (a trial step" in said[0]


def test_step_fits_runs_one_step_and_says_no_on_out_of_memory(monkeypatch):
    import torch

    from modexp.spec import ModelConfig, ModVariant
    from modexp.training import autobatch

    cfg, v = ModelConfig(name="m", n_layers=2, d_model=16, n_heads=2), ModVariant(**MOD)
    assert autobatch.step_fits(cfg, v, 64, 16, 2, torch.device("cpu"))

    def oom(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory (fake)")

    monkeypatch.setattr(autobatch.torch, "empty", oom)
    assert not autobatch.step_fits(cfg, v, 64, 16, 2, torch.device("cpu"))


def test_a_resume_that_chooses_another_size_rewrites_run_json(tmp_path):
    """micro_batch_size is execution only: a resume under less free memory records its own
    choice in run.json, the rest of the record untouched."""
    from dataclasses import replace

    from modexp.plan import RunPlan
    from modexp.runs import runner
    from modexp.runs.metrics import RUN_FILE, write_json_atomic

    fields = {f: None for f in RunPlan.__dataclass_fields__}
    run = RunPlan(**{**fields, "run_id": "r", "micro_batch_size": "auto"})
    write_json_atomic(tmp_path / RUN_FILE, {"plan": {**run.to_dict(), "micro_batch_auto": 4},
                                            "fingerprint": "abc"})
    runner._record_auto(tmp_path, run, replace(run, micro_batch_size=2, micro_batch_auto=2))
    record = json.loads((tmp_path / RUN_FILE).read_text())
    assert (record["plan"]["micro_batch_size"], record["plan"]["micro_batch_auto"]) == ("auto", 2)
    assert record["fingerprint"] == "abc"
