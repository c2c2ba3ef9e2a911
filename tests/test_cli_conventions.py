"""CLI conventions: --version, --device checked, --json summaries, batch-log status lines, -q,
warnings on stderr, no doubled error prefixes."""

from __future__ import annotations

import json
import re

import pytest
from typer.testing import CliRunner

from modexp import __version__
from modexp.cli import app


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_version_and_bad_device(write_spec):
    r = invoke("--version")
    assert r.exit_code == 0 and r.stdout.strip() == f"modexp {__version__}"
    for dev, msg in (("tpu", "--device: 'tpu' is not a device"), ("cuda:7", "--device: cuda:7 requested")):
        r = invoke("run", write_spec(), "--device", dev)
        assert r.exit_code == 2 and msg in r.output and "Traceback" not in r.output


def test_no_doubled_prefix(write_spec):
    r = invoke("run", write_spec(), "--shard", "3/2")
    assert r.exit_code == 2 and "--shard: expected i/n" in r.output and "--shard: --shard" not in r.output


def test_batch_log_lines_and_json_summary(write_spec, tmp_path):
    from tests.conftest import TINY

    spec = write_spec(budgets=[5e8], variants={"vanilla": {"kind": "vanilla"}},
                      train={**TINY["train"], "eval_points": 1})
    r = invoke("run", spec, "--results", tmp_path / "res", "--device", "cpu", "--json",
               "--status-every", "0")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)  # stdout is the JSON alone; progress went to stderr
    (run_id, info), = out["runs"].items()
    assert info["outcome"] == "done" and info["summary"]["state"] == "done" and out["failed"] == []
    steps = json.loads((tmp_path / "res" / "tiny" / run_id / "run.json").read_text())["plan"]["steps"]
    lines = [l for l in r.stderr.splitlines() if " step " in l]
    assert lines, r.stderr
    m = re.fullmatch(rf"{run_id} step (\d+)/{steps} \(([\d.]+)% of sweep FLOPs\) lm loss [\d.]+ "
                     r"[\d,]+ tok/s ETA \d+:\d\d:\d\d", lines[-1])
    assert m and float(m.group(2)) == pytest.approx(100 * int(m.group(1)) / steps, abs=0.1)
    assert f"done {run_id}" in r.stderr
    r = invoke("run", spec, "--results", tmp_path / "res", "-q")  # all done: quiet prints nothing
    assert r.exit_code == 0 and r.output == ""


def test_plan_warnings_on_stderr(write_spec, tmp_path):
    r = invoke("plan", write_spec(data={"source": str(tmp_path / "nowhere.txt"), "vocab_size": 256}))
    assert r.exit_code == 0 and "warning:" in r.stderr and "warning:" not in r.stdout
