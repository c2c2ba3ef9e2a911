"""Hostile input through the real CLI (issue 27, its non-data probes; issue 26's overrides):
each probe's setup, command, exit code, the one line printed (no traceback) and what is on
disk afterwards. Exit 2 means one problem line naming the file, field or flag, and nothing
written; text is printed verbatim, never read as Rich markup."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from modexp.cli import app

from conftest import TINY

ROOT = Path(__file__).resolve().parent.parent
MARKUP = "[/x] [bold]b[/bold] [data] ]["  # a closing tag no one opened, a style, an extra


def invoke(*args, **kw):
    return CliRunner().invoke(app, [str(a) for a in args], prog_name="modexp", **kw)


def files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def one_problem(r, *wanted: str) -> str:
    """Exit 2 with 'error: 1 problem(s) in ...' and one bullet holding every wanted text."""
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output and "╭" not in r.output, r.output
    head, *bullets = r.stderr.splitlines()
    assert head.startswith("error: 1 problem(s) in "), r.stderr
    assert len(bullets) == 1 and bullets[0].startswith("  - "), r.stderr
    for w in wanted:
        assert w in bullets[0], (w, bullets[0])
    return bullets[0]


def refused(r, root: Path, before: list[str], *wanted: str) -> str:
    """one_problem, and nothing written under root."""
    line = one_problem(r, *wanted)
    assert files(root) == before
    return line


def spec_file(root: Path, fname: str = "spec.yaml", **sections) -> Path:
    data = {**json.loads(json.dumps(TINY)), "budgets": [5e8], **sections}
    path = root / fname
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny finished sweep (vanilla and MoD) under a results root with brackets in its path."""
    root = tmp_path_factory.mktemp("trained")
    results = root / "r[" / "x]"  # the path holds '[/x]'
    spec = spec_file(root)
    r = invoke("run", spec, "--results", results, "--device", "cpu", "-q")
    assert r.exit_code == 0, r.output
    exp = results / "tiny"
    return {"spec": spec, "results": results, "exp": exp,
            "vanilla": exp / "5e8-xs-vanilla-s0", "mod": exp / "5e8-xs-mod-s0"}


# ---------------------------------------------------------------- 27.1: text is never markup
def test_missing_spec_path_with_a_closing_tag(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = invoke("plan", "d[/x]/s.yaml")
    refused(r, tmp_path, [], "d[/x]/s.yaml: file not found")


def test_spec_named_like_a_style_is_reported_as_named(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "[bold]x.yaml").write_text("name: [\n")
    r = invoke("plan", "[bold]x.yaml")
    refused(r, tmp_path, ["[bold]x.yaml"], "[bold]x.yaml: line 2, column 1: YAML syntax error")


def test_library_message_keeps_its_brackets(tmp_path):
    spec = spec_file(tmp_path, name="x[b]y")
    refused(invoke("plan", spec), tmp_path, files(tmp_path), "name: 'x[b]y' is not a safe folder name")


@pytest.mark.parametrize("where", ["--logger", "train.loggers"])
def test_install_hint_keeps_its_extra(tmp_path, monkeypatch, where):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "wandb" else real(n, *a))
    if where == "--logger":
        spec, extra = spec_file(tmp_path), ["--logger", "wandb"]
    else:
        spec, extra = spec_file(tmp_path, train={**TINY["train"], "loggers": ["wandb"]}), []
    before = files(tmp_path)
    r = invoke("run", spec, "--results", tmp_path / "res", "--device", "cpu", *extra)
    refused(r, tmp_path, before, f"{where}: wandb needs the `wandb` extra (pip install 'modexp[wandb]')")


def test_warning_with_a_closing_tag(tmp_path):
    spec = spec_file(tmp_path, data={"source": str(tmp_path / "no[/x].txt"), "seq_len": 32,
                                     "vocab_size": 256})  # missing data without a vocab: an error
    r = invoke("plan", spec)
    assert r.exit_code == 0 and "Traceback" not in r.output, r.output
    assert f"warning: data.source: {tmp_path / 'no[/x].txt'}" in r.stderr
    assert "warning:" not in r.stdout  # (the tmp path itself holds "warning")


def test_failed_run_line_and_summary_verbatim(tmp_path, monkeypatch):
    from modexp.runs import runner

    def boom(*a, **k):
        raise RuntimeError(f"boom {MARKUP}")

    monkeypatch.setattr(runner, "train_one", boom)
    spec = spec_file(tmp_path, variants={"vanilla": {"kind": "vanilla"}})
    r = invoke("run", spec, "--results", tmp_path / "res", "--device", "cpu")
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output  # a failed run: exit 1
    assert f"failed 5e8-xs-vanilla-s0: RuntimeError: boom {MARKUP}" in r.stderr
    assert "1 run(s) failed: 5e8-xs-vanilla-s0 (see error.log" in r.stderr
    r = invoke("status", tmp_path / "res" / "tiny")  # the status table's error cell
    assert r.exit_code == 0 and f"boom {MARKUP}"[:40] in r.stdout.replace("\n", " "), r.output


def test_progress_lines_are_text_on_any_console():
    from types import SimpleNamespace

    from rich.console import Console

    from modexp.runs.progress import SweepProgress

    console = Console(record=True, width=400, force_terminal=False)  # markup on by default
    ui = SweepProgress(console, verbosity=1, every=0)
    run = SimpleNamespace(run_id=f"id{MARKUP}", params=1, steps=2, batch_size=1, seq_len=2,
                          total_flops=10, flops_per_step=5)
    ui.start_sweep([run])
    ui.start_run(run)
    ui.step(1, 3.0)
    ui.end_run(run, {"state": "failed", "error": f"RuntimeError: {MARKUP}"})
    ui.skip_run(run, "done")
    ui.end_sweep()
    text = console.export_text()
    assert f"start id{MARKUP}:" in text and f"failed id{MARKUP}: RuntimeError: {MARKUP}" in text
    assert f"skip id{MARKUP}: already done" in text


def test_sample_and_status_and_plot_print_paths_and_prompts_verbatim(trained):
    r = invoke("sample", trained["vanilla"], "--prompt", f"def {MARKUP}", "--max-new-tokens", "3",
               "--device", "cpu")
    assert r.exit_code == 0 and r.stdout.startswith(f"def {MARKUP}"), r.output
    r = invoke("status", trained["exp"])
    assert r.exit_code == 0 and "5e8-xs-mod-s0" in r.stdout, r.output
    r = invoke("plot", trained["exp"])
    assert r.exit_code == 0 and "Traceback" not in r.output, r.output
    assert f"wrote {trained['exp'] / 'plots'}" in r.stdout  # 'r[/x]' printed as it is


def test_bench_report_verbatim(trained, monkeypatch):
    import modexp.bench as B

    real = B.bench

    def bracketed(*a, **k):
        rep = real(*a, **k)
        rep.weights = {k: f"checkpoint {MARKUP}" for k in rep.weights}
        return rep

    monkeypatch.setattr(B, "bench", bracketed)
    r = invoke("bench", trained["spec"], "--no-train", "--repeats", "1", "--new-tokens", "2",
               "--batch-size", "1", "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert f"weights: vanilla checkpoint {MARKUP}; MoD checkpoint {MARKUP}" in r.stdout


# ---------------------------------------------------------------- 27.2: run ids unique
def test_budgets_that_shared_a_tag_get_their_own(tmp_path):
    r = invoke("plan", spec_file(tmp_path, budgets=[2e8, 2.0000001e8]), "--json")
    assert r.exit_code == 0, r.output
    ids = [run["run_id"] for run in json.loads(r.stdout)]
    assert ids == ["2e8-xs-vanilla-s0", "2e8-xs-mod-s0", "2.0000001e8-xs-vanilla-s0",
                   "2.0000001e8-xs-mod-s0"]


def test_duplicate_seeds_refused(tmp_path):
    spec = spec_file(tmp_path, seeds=[0, 1, 0])
    refused(invoke("plan", spec), tmp_path, files(tmp_path),
            "seeds: each seed must appear once; 0 repeated in [0, 1, 0]")


# ---------------------------------------------------------------- 27.5: sample and bench bounded
@pytest.mark.parametrize("flag, value, wanted", [
    ("--max-new-tokens", "1000000000", "--max-new-tokens: at most "),
    ("--max-new-tokens", "0", "--max-new-tokens: must be at least 1"),
    ("--seed", str(2 ** 70), "--seed: must lie in 0..2**64 - 1"),
    ("--seed", "-1", "--seed: must lie in 0..2**64 - 1"),
    ("--temperature", "nan", "--temperature: must be 0 (greedy) or between 1e-06 and 1e+06"),
    ("--temperature", "1e-9", "--temperature: must be 0 (greedy) or between"),
    ("--top-k", "0", "--top-k: must be at least 1"),
])
def test_sample_flags_bounded(trained, monkeypatch, flag, value, wanted):
    import modexp.memory as M

    monkeypatch.setattr(M, "cpu_available_bytes", lambda: 2 ** 30)  # 1 GiB free, whatever is
    before = files(trained["exp"])
    r = invoke("sample", trained["vanilla"], "--prompt", "def ", flag, value, "--device", "cpu")
    refused(r, trained["exp"], before, wanted)


def test_sample_prompt_past_memory(trained, monkeypatch):
    import modexp.memory as M

    monkeypatch.setattr(M, "cpu_available_bytes", lambda: 3 * 2 ** 20)  # 3 MiB free
    r = invoke("sample", trained["vanilla"], "--prompt", "x" * 5000, "--max-new-tokens", "1",
               "--device", "cpu")
    line = one_problem(r, "--prompt: at most ", "tokens here; 1 x (5,000 prompt + 1 new) tokens")
    assert "and cpu has 3 MiB free" in line


def test_sample_non_utf8_prompt_bytes(trained, tmp_path):
    """From the command line a 0xff byte arrives as a lone surrogate (surrogateescape): a
    byte-level run decodes from byte 255 itself, and prints it as \\xff."""
    prompt = os.fsdecode(b"def \xff")
    r = invoke("sample", trained["vanilla"], "--prompt", prompt, "--max-new-tokens", "2",
               "--temperature", "0", "--device", "cpu", "--json")
    assert r.exit_code == 0, r.output
    r2 = invoke("sample", trained["vanilla"], "--prompt", prompt, "--max-new-tokens", "2",
                "--temperature", "0", "--device", "cpu")
    assert r2.exit_code == 0 and r2.stdout.startswith("def \\xff"), r2.output
    # a subprocess, as a shell passes the byte (not Python's own str)
    code = ("import sys; from modexp.cli import app; sys.argv[0] = 'modexp'; app()")
    p = subprocess.run([sys.executable, "-c", code, "sample", str(trained["vanilla"]), "--prompt",
                        b"def \xff", "--max-new-tokens", "2", "--temperature", "0", "--device",
                        "cpu", "--json"], capture_output=True, cwd=tmp_path)
    assert p.returncode == 0, p.stderr.decode()
    assert json.loads(p.stdout)["tokens"] == json.loads(r.stdout)["tokens"]


def test_tokenizer_run_refuses_non_utf8_prompt():
    from modexp.data.codec import Codec
    from modexp.runs.sample import encode_prompt
    from modexp.spec import SpecError

    assert encode_prompt(os.fsdecode(b"a\xff"), 256, Codec("bytes")) == [97, 255]
    with pytest.raises(SpecError) as e:
        encode_prompt(os.fsdecode(b"a\xff"), 256, Codec("tokenizer", tokenizer=None))
    assert e.value.problems == ["--prompt: character 1 (\\xff) is not text (a byte that is not "
                                "UTF-8); this run's tokenizer needs UTF-8 text (a byte-level run "
                                "takes any bytes)"]
    with pytest.raises(SpecError):  # a surrogate no byte stands for
        encode_prompt("a\ud800", 256, Codec("bytes"))


def test_sample_warnings_on_stderr(trained):
    r = invoke("sample", trained["vanilla"], "--prompt", "def ", "--max-new-tokens", "40",
               "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert "warning:" not in r.stdout  # (the tmp path itself holds "warning") and "passes the trained seq_len 32" in r.stderr


@pytest.mark.parametrize("flag, value, wanted", [
    ("--train-repeats", "0", "--train-repeats: must be at least 1 (or --no-train), got 0"),
    ("--repeats", "0", "--repeats: must be at least 1, got 0"),
    ("--batch-size", "0", "--batch-size: each must be at least 1, got 1, 0"),  # repeatable
    ("--prompt-len", "0", "--prompt-len: must be at least 1, got 0"),
    ("--new-tokens", "1", "--new-tokens: must be at least 2, got 1"),
    ("--new-tokens", "1000000000", "--new-tokens: at most "),
    ("--prompt-len", "1000000000", "--prompt-len: at most "),
    ("--prompt-len", "100000", "--prompt-len: at most "),  # vanilla fits; MoD's routed prefill not
    ("--repeats", "100000000", "--repeats: at most "),  # 3.2 GB of prompts
])
def test_bench_flags_bounded(tmp_path, monkeypatch, flag, value, wanted):
    import modexp.memory as M

    monkeypatch.setattr(M, "cpu_available_bytes", lambda: 2 ** 30)  # 1 GiB free, whatever is
    spec = spec_file(tmp_path)
    before = files(tmp_path)
    r = invoke("bench", spec, "--device", "cpu", "--batch-size", "1", "--prompt-len", "4",
               "--new-tokens", "2", "--repeats", "1", flag, value)
    refused(r, tmp_path, before, wanted)


def test_the_limit_named_fits_every_model(monkeypatch):
    import re

    import modexp.memory as M
    from modexp import flops as F
    from modexp.runs.sample import check_generation_memory
    from modexp.spec import parse_spec

    spec = parse_spec(TINY)
    archs = [F.arch_from_config(spec.models[0], spec.variants[v], 256) for v in ("vanilla", "mod")]
    free = 2 ** 30
    monkeypatch.setattr(M, "cpu_available_bytes", lambda: free)
    (line,) = check_generation_memory(archs, 1, 10 ** 6, 2, "cpu", ("--new-tokens", "", "--prompt-len"))
    most = int(re.match(r"--prompt-len: at most ([\d,]+) tokens", line).group(1).replace(",", ""))
    assert all(M.generation_memory(a, 1, most, 1).total <= free for a in archs)
    assert any(M.generation_memory(a, 1, most + 1, 1).total > free for a in archs)
    assert M.generation_memory(archs[0], 1, 2 * most, 1).total <= free  # MoD set the limit


def test_bench_training_step_past_memory(tmp_path, monkeypatch):
    import modexp.memory as M

    monkeypatch.setattr(M, "cpu_available_bytes", lambda: 6 * 2 ** 20)
    spec = spec_file(tmp_path, train={**TINY["train"], "batch_size": 512})
    r = invoke("bench", spec, "--device", "cpu", "--batch-size", "1", "--prompt-len", "4",
               "--new-tokens", "2", "--repeats", "1", "--train-repeats", "1")
    one_problem(r, "--train: the training step of batch 512 x 32 needs about", "--no-train")


# ---------------------------------------------------------------- 27.6: specs
def test_duplicate_yaml_key_refused_with_its_line(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: tiny\nbudgets: [5e8]\nmodels:\n  - {name: xs, n_layers: 2, "
                    "d_model: 32, n_heads: 2}\nvariants:\n  v: {kind: vanilla}\ntrain:\n  lr: 1.0e-3\n"
                    "  batch_size: 4\n  lr: 2.0e-3\n")
    refused(invoke("plan", spec), tmp_path, ["spec.yaml"],
            "line 10, column 3: duplicate key 'lr' (first given on line 8); each key may appear once")


def test_yaml_merge_keys_may_still_be_overridden(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: tiny\nbudgets: [5e8]\nbase: &b {name: xs, n_layers: 2, d_model: 32, "
                    "n_heads: 2}\nmodels:\n  - {<<: *b, d_model: 64}\nvariants:\n  v: {kind: vanilla}\n")
    r = invoke("plan", spec)
    one_problem(r, "base: unknown key")  # merged fine; only the helper key is unknown


def test_steps_past_the_sampler_refused_in_plan(tmp_path):
    spec = spec_file(tmp_path, budgets=[2e17], variants={"vanilla": {"kind": "vanilla"}})
    refused(invoke("plan", spec), tmp_path, files(tmp_path),
            "budgets[0]: 2e+17 FLOPs is 7,064,254,196 steps of model xs / variant vanilla, past "
            "the data sampler's 4,294,967,296")


def test_step_limit_is_the_samplers():
    from modexp.data.tokens import SEED_LIMIT, batch_seed
    from modexp.plan import STEP_LIMIT, build_plan
    from modexp.spec import SpecError, parse_spec

    assert STEP_LIMIT == SEED_LIMIT
    batch_seed(0, STEP_LIMIT - 1)  # the last step of a STEP_LIMIT-step run
    with pytest.raises(ValueError):
        batch_seed(0, STEP_LIMIT)
    one = dict(TINY, variants={"v": {"kind": "vanilla"}})
    fps = build_plan(parse_spec(one)).runs[0].flops_per_step
    assert build_plan(parse_spec(dict(one, budgets=[STEP_LIMIT * fps]))).runs[0].steps == STEP_LIMIT
    with pytest.raises(SpecError):
        build_plan(parse_spec(dict(one, budgets=[(STEP_LIMIT + 1) * fps])))


def test_run_too_big_for_memory_refused_before_anything_is_written(tmp_path):
    huge = [{"name": "huge", "n_layers": 64, "d_model": 16384, "n_heads": 128}]
    spec = spec_file(tmp_path, budgets=[1e16], models=huge, variants={"vanilla": {"kind": "vanilla"}})
    before = files(tmp_path)
    r = invoke("run", spec, "--results", tmp_path / "res", "--device", "cpu")
    refused(r, tmp_path, before, "1e16-huge-vanilla-s0: a training step needs about ",
            "(params 768 GiB, grads 768 GiB, AdamW 1,536 GiB", "float32, micro-batch 4",
            "and cpu has ", "a smaller train.micro_batch_size")


def test_memory_check_counts_the_processes_sharing_ram(write_spec, monkeypatch):
    import modexp.memory as M
    from modexp.plan import plan_file

    spec, plan = plan_file(write_spec(variants={"v": {"kind": "vanilla"}}))
    need = plan.runs[0].memory["total"]
    monkeypatch.setattr(M, "cpu_available_bytes", lambda: 3 * need)
    assert M.fit_problems(spec, plan.runs, {4: 4}, "cpu") == []
    assert "x 4 processes" in M.fit_problems(spec, plan.runs, {4: 4}, "cpu", 4, local=4)[0]



def test_memory_check_counts_activation_checkpointing_and_fsdp_shards(write_spec, monkeypatch):
    """The run's refusal estimates the step the Trainer will take: with checkpointing, or
    sharded over the processes under fsdp, a step that fits is not refused."""
    import modexp.memory as M
    from modexp.plan import plan_file

    spec, plan = plan_file(write_spec(variants={"v": {"kind": "vanilla"}}))
    need = plan.runs[0].memory["total"]
    monkeypatch.setattr(M, "cpu_available_bytes", lambda: need - 1)
    assert M.fit_problems(spec, plan.runs, {4: 4}, "cpu")  # plain: one byte short
    ckpt = spec.model_copy(update={"train": spec.train.model_copy(update={"activation_checkpointing": True})})
    assert M.fit_problems(ckpt, plan.runs, {4: 4}, "cpu") == []
    fsdp = spec.model_copy(update={"train": spec.train.model_copy(update={"parallel": "fsdp"})})
    assert M.fit_problems(fsdp, plan.runs, {4: 4}, "cpu", 4) == []
    assert M.fit_problems(fsdp, plan.runs, {4: 4}, "cpu", 1)  # one process: nothing to shard

def test_memory_check_reads_the_gpu_on_a_cpu_machine(write_spec, monkeypatch):
    import torch

    from modexp.memory import fit_problems
    from modexp.plan import plan_file

    spec, plan = plan_file(write_spec(variants={"v": {"kind": "vanilla"}}))
    asked = []
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda d: asked.append(str(d)) or (10 ** 4, 10 ** 9))
    monkeypatch.setenv("LOCAL_RANK", "3")
    (line,) = fit_problems(spec, plan.runs, {4: 4}, "cuda", 2, local=2)  # each rank its own GPU
    assert asked == ["cuda:3"] and "bfloat16, micro-batch 4" in line and "cuda:3 has 9.8 KiB free" in line
    assert " processes" not in line
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda d: (10 ** 12, 10 ** 12))
    assert fit_problems(spec, plan.runs, {4: 4}, "cuda:0") == []


def test_plan_json_shows_each_runs_memory(tmp_path):
    r = invoke("plan", spec_file(tmp_path, train={**TINY["train"], "micro_batch_size": 2}), "--json")
    assert r.exit_code == 0, r.output
    for run in json.loads(r.stdout):
        m = run["memory"]
        assert m["micro_batch"] == 2 and m["dtype"] == "float32"
        assert m["total"] == sum(m[k] for k in ("params", "grads", "optimizer", "weight_copies",
                                                "activations", "loss"))
        assert m["params"] == 4 * run["params"]


# ---------------------------------------------------------------- 27.7: loggers
RAISE_IN_WRITER_THREAD = """
import errno, threading
from tensorboard.summary.writer import event_file_writer, record_writer
init = event_file_writer._AsyncWriterThread.__init__  # flush after every write, not every 120 s
event_file_writer._AsyncWriterThread.__init__ = lambda self, q, w, secs: init(self, q, w, 0)
calls = {{"n": 0}}
real = record_writer.RecordWriter.{method}
def failing(self, *a):
    if threading.current_thread() is not threading.main_thread():
        calls["n"] += 1
        if calls["n"] > {after}:
            raise OSError(errno.ENOSPC, "No space left on device")
    return real(self, *a)
record_writer.RecordWriter.{method} = failing
import sys
from modexp.cli import app
sys.argv[0] = "modexp"
app()
"""


@pytest.mark.parametrize("method, after", [("write", 3), ("flush", 2)],
                         ids=["write mid-run", "flush mid-run"])
def test_tensorboard_writer_thread_failure_warns_once(tmp_path, method, after):
    pytest.importorskip("tensorboard")
    spec = spec_file(tmp_path, variants={"vanilla": {"kind": "vanilla"}},
                     train={**TINY["train"], "loggers": ["tensorboard"], "log_every": 1})
    p = subprocess.run([sys.executable, "-c", RAISE_IN_WRITER_THREAD.format(method=method, after=after),
                        "run", str(spec), "--results", str(tmp_path / "res"), "--device", "cpu", "-q"],
                       capture_output=True, text=True, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stderr and "Exception in thread" not in p.stderr, p.stderr
    assert p.stderr.count("warning: tensorboard logger failed (OSError: [Errno 28] No space left "
                          "on device)") == 1, p.stderr
    run_dir = tmp_path / "res" / "tiny" / "5e8-xs-vanilla-s0"
    assert json.loads((run_dir / "summary.json").read_text())["state"] == "done"


def _read_only(folder: Path):
    """Make a folder unwritable, for root too (chattr +i) where the mode bits do not bind."""
    folder.chmod(0o555)
    probe = folder / "probe"
    try:
        probe.touch()
    except OSError:
        return lambda: folder.chmod(0o755)
    probe.unlink()
    if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0:
        try:
            (folder / "probe").touch()
        except OSError:
            return lambda: (subprocess.run(["chattr", "-i", str(folder)]), folder.chmod(0o755))
        subprocess.run(["chattr", "-i", str(folder)])
    folder.chmod(0o755)
    pytest.skip("cannot make a folder read-only here")


def test_tensorboard_read_only_folder_warns_once(tmp_path):
    pytest.importorskip("tensorboard")
    spec = spec_file(tmp_path, variants={"vanilla": {"kind": "vanilla"}},
                     train={**TINY["train"], "loggers": ["tensorboard"]})
    tb = tmp_path / "res" / "tiny" / "5e8-xs-vanilla-s0" / "tensorboard"
    tb.mkdir(parents=True)
    undo = _read_only(tb)
    try:
        p = subprocess.run([sys.executable, "-m", "modexp", "run", str(spec), "--results",
                            str(tmp_path / "res"), "--device", "cpu", "-q"],
                           capture_output=True, text=True, cwd=tmp_path)
    finally:
        undo()
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stderr and "Exception in thread" not in p.stderr, p.stderr
    assert p.stderr.count("warning: tensorboard logger failed") == 1, p.stderr
    assert p.stderr.count("\n") == 1  # that warning is all


def test_loggers_added_to_a_finished_sweep_do_not_refuse_it(tmp_path):
    spec = spec_file(tmp_path, variants={"vanilla": {"kind": "vanilla"}})
    assert invoke("run", spec, "--results", tmp_path / "res", "--device", "cpu", "-q").exit_code == 0
    spec = spec_file(tmp_path, variants={"vanilla": {"kind": "vanilla"}},
                     train={**TINY["train"], "loggers": ["tensorboard"]})
    r = invoke("run", spec, "--results", tmp_path / "res", "--device", "cpu", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["runs"]["5e8-xs-vanilla-s0"]["outcome"] == "skipped"


def test_loggers_out_of_the_fingerprint_lr_in_it():
    from modexp.plan import build_plan
    from modexp.runs.fingerprint import fingerprint
    from modexp.spec import parse_spec, spec_to_dict

    def prints(**train):
        spec = parse_spec(dict(TINY, train={**TINY["train"], **train}))
        return fingerprint(spec_to_dict(spec), build_plan(spec).runs[0].to_dict(), {"sha256": "x"})

    assert prints()["sha256"] == prints(loggers=["tensorboard", "wandb"])["sha256"]
    assert prints()["sha256"] != prints(lr=1e-3)["sha256"]


# ---------------------------------------------------------------- 26.2: the status line
def test_status_line_shows_the_lm_loss_labelled(tmp_path):
    spec = spec_file(tmp_path, variants={"mod": TINY["variants"]["mod"]})
    r = invoke("run", spec, "--results", tmp_path / "res", "--device", "cpu", "--status-every", "0")
    assert r.exit_code == 0, r.output
    rows = [json.loads(l) for l in (tmp_path / "res" / "tiny" / "5e8-xs-mod-s0" / "metrics.jsonl")
            .read_text().splitlines()]
    last = [row for row in rows if row["kind"] == "train"][-1]
    assert abs(last["train_loss"] - last["lm_loss"]) > 5e-4  # MoD's predictor BCE is in train_loss
    line = [l for l in r.stderr.splitlines() if f" step {last['step']}/" in l][-1]
    assert f" lm loss {last['lm_loss']:.3f} " in line and f"{last['train_loss']:.3f}" not in line


# ---------------------------------------------------------------- 26.5: CLI overrides
def test_set_overrides_plan(tmp_path):
    spec = spec_file(tmp_path)
    r = invoke("plan", spec, "--json", "--set", "train.lr=1e-3", "--set", "models[0].d_model=64",
               "--set", "seeds=[3]")
    assert r.exit_code == 0, r.output
    runs = json.loads(r.stdout)
    assert {run["lr"] for run in runs} == {1e-3} and {run["seed"] for run in runs} == {3}
    base = json.loads(invoke("plan", spec, "--json").stdout)
    assert runs[0]["params"] > base[0]["params"]
    dotted = json.loads(invoke("plan", spec, "--json", "--set", "models.0.d_model=64").stdout)
    assert dotted[0]["params"] == runs[0]["params"]


@pytest.mark.parametrize("override, wanted", [
    ("train.lr=abc", "train.lr: Input should be a valid number, unable to parse string as a number "
                     "(from --set train.lr=abc)"),
    ("train.bach_size=3", "train.bach_size: unknown key (did you mean 'batch_size'?)"),
    ("models[0].d_model=31", "models[0].n_heads: must divide d_model (31), got 2 (from --set "
                             "models[0].d_model=31)"),
    ("models[5].d_model=64", "--set models[5].d_model=64: models has 1 entries (indices 0..0); 5 is "
                             "not one of them"),
    ("train.lr.x=1", "--set train.lr.x=1: train.lr is 0.003, not a mapping or list"),
    ("train.lr", "--set train.lr: expected PATH=VALUE"),
    ("train.lr=[1", "--set train.lr=[1: the value is not YAML"),
])
def test_bad_override_one_line_naming_it(tmp_path, override, wanted):
    spec = spec_file(tmp_path)
    refused(invoke("plan", spec, "--set", override), tmp_path, files(tmp_path), wanted)


def test_set_recorded_in_run_json_and_seen_by_the_fingerprint(tmp_path):
    spec = spec_file(tmp_path, variants={"vanilla": {"kind": "vanilla"}})
    r = invoke("run", spec, "--results", tmp_path / "res", "--device", "cpu", "-q",
               "--set", "train.lr=2e-3")
    assert r.exit_code == 0, r.output
    run = json.loads((tmp_path / "res" / "tiny" / "5e8-xs-vanilla-s0" / "run.json").read_text())
    assert run["spec"]["train"]["lr"] == 2e-3 and run["fingerprint"]["fields"]["train"]["lr"] == 2e-3
    before = files(tmp_path)
    r = invoke("run", spec, "--results", tmp_path / "res", "--device", "cpu")  # without it
    assert r.exit_code == 2 and "5e8-xs-vanilla-s0: differs in train.lr" in r.stderr
    assert files(tmp_path) == before
    r = invoke("run", spec, "--results", tmp_path / "res", "--device", "cpu", "--json",
               "--set", "train.lr=2e-3")
    assert r.exit_code == 0 and json.loads(r.stdout)["failed"] == []


def test_status_with_a_renaming_override(tmp_path):
    spec = spec_file(tmp_path, variants={"vanilla": {"kind": "vanilla"}})
    r = invoke("run", spec, "--results", tmp_path / "res", "--device", "cpu", "-q", "--set", "name=other")
    assert r.exit_code == 0 and (tmp_path / "res" / "other").is_dir(), r.output
    r = invoke("status", spec, "--results", tmp_path / "res", "--set", "name=other", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)[0]["state"] == "done", r.output
    r = invoke("status", tmp_path / "res" / "other", "--set", "name=x")
    one_problem(r, "--set: ", "is a results folder")


def test_print_spec_shows_overrides_and_defaults(tmp_path):
    spec = spec_file(tmp_path)
    r = invoke("plan", spec, "--print-spec", "--set", "train.lr=1e-3")
    assert r.exit_code == 0, r.output
    resolved = yaml.safe_load(r.stdout)
    assert resolved["train"]["lr"] == 1e-3 and resolved["train"]["warmup"] == 0.02  # a default
    assert resolved["variants"]["mod"]["gate"] == "sigmoid"
    from modexp.spec import load_spec, parse_spec

    assert parse_spec(resolved) == load_spec(spec, ["train.lr=1e-3"])  # it round-trips


# ---------------------------------------------------------------- 26.5: one error style
@pytest.mark.parametrize("args, wanted", [
    (["run", "{spec}", "--bogus"], ["modexp run: --bogus: no such option", "`modexp run --help`"]),
    (["sample", "{tmp}", "--prompt", "a", "--seed", "x"], ["--seed: ", "valid integer"]),
    (["plan"], ["SPEC: missing (usage: modexp plan [OPTIONS] SPEC)"]),
    (["plna", "{spec}"], ["No such command 'plna'", "plan"]),
    (["run", "{spec}", "--only"], ["--only", "requires an argument"]),
    (["run", "{spec}", "--peak-tflops", "-1"], ["--peak-tflops: "]),
])
def test_usage_errors_in_modexps_style(tmp_path, args, wanted):
    spec = spec_file(tmp_path)
    before = files(tmp_path)
    r = invoke(*[a.format(spec=spec, tmp=tmp_path) for a in args])
    refused(r, tmp_path, before, *wanted)
    assert "Usage:" not in r.output


def test_no_arguments_still_print_help():
    r = invoke()
    assert "plan" in r.output and "error:" not in r.output
