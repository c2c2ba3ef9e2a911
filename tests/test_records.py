"""Typed run records (modexp/records.py): round trips, the previous layout, clear refusals, every
key the trainer writes declared, and metric names spelled nowhere else."""

import ast
import json
import math
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from modexp import records as R
from modexp.analysis.results import load_results
from modexp.cli import app
from modexp.records import EvalRow, RecordError, RunRecord, Summary, TrainRow
from modexp.runs.metrics import read_metrics, read_rows, read_run, read_summary
from modexp.spec import SpecError

from conftest import TINY

ROOT = Path(__file__).resolve().parents[1] / "modexp"
TRAIN = TrainRow(step=4, tokens=512, flops=8.0e6, train_loss=3.1, lm_loss=3.0, aux_loss=0.1,
                 predictor_loss=None, lr=1e-3, grad_norm=0.5, predictor_grad_norm=None,
                 routed_frac=[0.25], wall_time=1.5, tokens_per_s=340.0, flops_per_s=5e6, mfu=None)
DENSE_EVAL = EvalRow(step=4, tokens=512, flops=8.0e6, budget_frac=0.5, eval_loss=2.9, eval_sequences=4)
MOD_EVAL = EvalRow(step=4, tokens=512, flops=8.0e6, budget_frac=0.5, eval_loss=2.9,
                   predictor_acc=0.8, predictor_precision=0.6, predictor_recall=0.5,
                   predictor_acc_ci=None, eval_sequences=1, threshold=[0.1], eval_loss_causal=3.0,
                   routed_frac_causal=[0.2], routed_frac_causal_ci=[None],
                   routed_frac_causal_pos=[[0.1, 0.3]], pos_bin_starts=[0, 16],
                   routed_frac_topk=[0.25], predictor_acc_causal=0.7,
                   predictor_precision_causal=0.5, predictor_recall_causal=0.4,
                   predictor_acc_causal_ci=None)
DONE = Summary(run_id="2e9-xs-mod-s0", step=4, flops=8e6, final_eval_loss=2.9, wall_time=3.0,
               peak_mem_bytes=10, peak_mem_kind="process_max_rss")
FAILED = Summary.failed("2e9-xs-mod-s0", "RuntimeError: boom")
RUN = RunRecord(plan={"run_id": "a", "steps": 4}, spec={"name": "tiny"}, data={"sha256": "x"},
                fingerprint={"sha256": "y"})


@pytest.mark.parametrize("rec", [TRAIN, DENSE_EVAL, MOD_EVAL, DONE, FAILED, RUN])
def test_round_trip(rec):
    d = rec.to_dict()
    assert d[R.SCHEMA_KEY] == R.SCHEMA
    back = type(rec).from_dict(json.loads(json.dumps(d)), "x")
    assert back == rec and back.to_dict() == d


def test_layouts_write_what_the_trainer_wrote():
    assert list(FAILED.to_dict()) == ["state", "error", "run_id", "schema"]
    assert list(DONE.to_dict())[:2] == ["run_id", "state"] and "error" not in DONE.to_dict()
    assert "eval_loss_causal" not in DENSE_EVAL.to_dict() and "routed_frac" not in DENSE_EVAL.to_dict()
    routed = EvalRow(step=1, eval_loss=3.0, routed_frac=[0.25]).to_dict()  # routed, no decision
    assert routed["routed_frac"] == [0.25] and "threshold" not in routed
    assert MOD_EVAL.to_dict()["predictor_acc_ci"] is None  # present, null: one sequence scored
    assert TRAIN.to_dict()["predictor_loss"] is None  # every train field, null where unknown


def test_previous_layout_is_read_and_written_back_as_it_was(tmp_path):
    """Files from before the schema key: no schema, eval rows without the by-position fields,
    and (as hand-made fixtures have) only some fields, plus a key no record declares."""
    old_eval = {k: v for k, v in MOD_EVAL.to_dict().items()
                if k not in ("schema", "routed_frac_causal_pos", "pos_bin_starts")}
    old_train = {"kind": "train", "step": 2, "flops": 4.0, "lm_loss": 3.0, "gone_field": 1}
    (tmp_path / "metrics.jsonl").write_text(json.dumps(old_train) + "\n" + json.dumps(old_eval) + "\n")
    tr, ev = read_rows(tmp_path / "metrics.jsonl")
    assert isinstance(tr, TrainRow) and tr.schema == 0 and tr.lm_loss == 3.0 and tr.lr is None
    assert ev.routed_frac_causal_pos is None and ev.eval_loss_causal == 3.0
    assert tr.to_dict() == {"kind": "train", "step": 2, "flops": 4.0, "lm_loss": 3.0}
    assert ev.to_dict() == old_eval
    old_summary = {k: v for k, v in DONE.to_dict().items() if k != "schema"}
    (tmp_path / "summary.json").write_text(json.dumps(old_summary))
    s = read_summary(tmp_path / "summary.json")
    assert s.final_eval_loss == 2.9 and s.to_dict() == old_summary
    (tmp_path / "run.json").write_text(json.dumps({"plan": {"run_id": "a"}, "spec": {}}))
    assert read_run(tmp_path / "run.json").plan == {"run_id": "a"}


@pytest.mark.parametrize("bad, says", [
    ({**DONE.to_dict(), "schema": 2}, "summary.json: schema is 2; allowed: 1, or no schema key"),
    ({**DONE.to_dict(), "schema": "1"}, "summary.json: schema is '1'"),
    ({**DONE.to_dict(), "schema": 0}, "summary.json: schema is 0"),
    ({**DONE.to_dict(), "final_eval_loss": "low"}, "summary.json: final_eval_loss is 'low', expected a number or null"),
    ({**DONE.to_dict(), "routed_frac_causal": 0.2}, "routed_frac_causal is 0.2, expected a list of numbers or null"),
    ([1, 2], "summary.json: expected a JSON object, got list"),
])
def test_future_schema_or_wrong_type_is_one_line(tmp_path, bad, says):
    (tmp_path / "summary.json").write_text(json.dumps(bad))
    with pytest.raises(RecordError) as e:
        read_summary(tmp_path / "summary.json")
    assert says in str(e.value) and "\n" not in str(e.value)


def test_rows_refused_by_kind_and_type():
    with pytest.raises(RecordError, match=r"^m row 3: kind is 'what', expected 'train' or 'eval'$"):
        R.row_from_dict({"kind": "what", "step": 1}, "m row 3")
    with pytest.raises(RecordError, match="step is missing, expected an integer"):
        R.row_from_dict({"kind": "eval"})
    with pytest.raises(RecordError, match="pos_bin_starts is 'x', expected a list of numbers"):
        R.row_from_dict({**MOD_EVAL.to_dict(), "pos_bin_starts": "x"})


def test_names_refuse_an_undeclared_field():
    assert R.SUMMARY.final_eval_loss == "final_eval_loss" and R.EVAL.pos_bin_starts == "pos_bin_starts"
    with pytest.raises(AttributeError):
        R.SUMMARY.final_eval_los  # noqa: B018 (a typo fails where it is read)
    with pytest.raises(AttributeError):
        R.TRAIN.eval_loss  # a field of the other row kind


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The tiny spec (vanilla and MoD with a causal predictor) trained once through the CLI."""
    import yaml

    tmp = tmp_path_factory.mktemp("records")
    spec = tmp / "spec.yaml"
    spec.write_text(yaml.safe_dump(TINY, sort_keys=False))
    r = CliRunner().invoke(app, ["run", str(spec), "--results", str(tmp / "res"), "--device", "cpu", "-q"])
    assert r.exit_code == 0, r.output
    return tmp / "res" / "tiny"


def test_every_key_the_trainer_writes_is_a_declared_field(trained):
    runs = sorted(trained.glob("*/run.json"))
    assert len(runs) == 2
    seen = set()
    for run_file in runs:
        d = run_file.parent
        for row in read_metrics(d / "metrics.jsonl"):
            cls = R.ROWS[row["kind"]]
            assert set(row) <= {R.KIND_KEY, R.SCHEMA_KEY, *cls.names()}, set(row) - set(cls.names())
            assert row[R.SCHEMA_KEY] == R.SCHEMA and cls.from_dict(row).to_dict() == row
            seen |= set(row)
        for name, cls in (("summary.json", Summary), ("run.json", RunRecord)):
            obj = json.loads((d / name).read_text())
            assert set(obj) <= {R.SCHEMA_KEY, *cls.names()} and obj[R.SCHEMA_KEY] == R.SCHEMA
            assert cls.from_dict(obj).to_dict() == obj
        assert set(json.loads((d / "summary.json").read_text())) == {R.SCHEMA_KEY, *Summary.names()} - {"error"}
    # the MoD run's rows carry its decision fields, by-position ones included
    assert {"eval_loss_causal", "routed_frac_causal_pos", "pos_bin_starts"} <= seen


def test_a_future_schema_row_stops_plot_and_status_with_one_line(trained, tmp_path):
    exp = tmp_path / "tiny"
    shutil.copytree(trained, exp)
    metrics = next(exp.glob("*-mod-*")) / "metrics.jsonl"
    rows = read_metrics(metrics)
    rows[-1][R.SCHEMA_KEY] = 7
    metrics.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(SpecError) as e:
        load_results(exp)
    assert any(f"metrics.jsonl row {len(rows)}: schema is 7" in p for p in e.value.problems)
    r = CliRunner().invoke(app, ["plot", str(exp)])
    assert r.exit_code == 2 and "schema is 7" in r.output and "Traceback" not in r.output
    summary = metrics.parent / "summary.json"
    summary.write_text(json.dumps({**json.loads(summary.read_text()), R.SCHEMA_KEY: 7}))
    r = CliRunner().invoke(app, ["status", str(exp)])
    assert "corrupt" in r.output and "Traceback" not in r.output


def test_no_metric_name_is_spelled_outside_records():
    """Metric names are the records' fields: analysis, runs and bench take them from there
    (`SUMMARY.final_eval_loss`), never as a string literal. Names other files' layouts share
    (plan entries, specs, frames' axes, bench timings) are left out: step, tokens, flops,
    budget_frac, state, run_id, error, plan, spec, data, fingerprint, lr, mfu, flops_per_s."""
    shared = {"step", "tokens", "flops", "budget_frac", "state", "run_id", "error", "plan", "spec",
              "data", "fingerprint", "lr", "mfu", "flops_per_s"}
    metrics = {n for c in (TrainRow, EvalRow, Summary, RunRecord) for n in c.names()} - shared
    assert {"final_eval_loss", "eval_loss_causal", "routed_frac_causal_pos", "pos_bin_starts",
            "predictor_acc"} <= metrics
    found = [f"{p.relative_to(ROOT.parent)}:{n.lineno}: {n.value!r}"
             for part in ("analysis", "runs", "bench") for p in sorted((ROOT / part).rglob("*.py"))
             for n in ast.walk(ast.parse(p.read_text()))
             if isinstance(n, ast.Constant) and n.value in metrics]
    assert not found, "spell these through modexp.records (TRAIN / EVAL / SUMMARY):\n" + "\n".join(found)


def test_nan_is_kept_in_the_record_and_written_as_null(tmp_path):
    from modexp.runs.metrics import MetricsWriter

    MetricsWriter(tmp_path).log(EvalRow(step=1, eval_loss=math.nan, eval_sequences=2))
    (row,) = read_rows(tmp_path / "metrics.jsonl")
    assert row.eval_loss is None and row.schema == R.SCHEMA


def test_a_future_schema_run_json_is_refused_by_run_with_one_line_naming_it(trained, tmp_path):
    """`modexp run` over a results folder whose run.json another schema wrote: the run is
    named with the record's own line (not a settings diff), exit 2, nothing trained."""
    import yaml

    res = tmp_path / "res"
    shutil.copytree(trained, res / "tiny")
    run_file = next((res / "tiny").glob("*-mod-*")) / "run.json"
    run_file.write_text(json.dumps({**json.loads(run_file.read_text()), R.SCHEMA_KEY: 7}))
    before = {p: p.stat().st_mtime_ns for p in res.rglob("*") if p.is_file()}
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(TINY, sort_keys=False))
    r = CliRunner().invoke(app, ["run", str(spec), "--results", str(res), "--device", "cpu", "-q"])
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    line = next(l for l in r.output.splitlines() if run_file.parent.name in l)
    assert "unreadable" in line and "schema is 7" in line, line
    assert {p: p.stat().st_mtime_ns for p in res.rglob("*") if p.is_file()} == before
