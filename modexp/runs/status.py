"""`modexp status`: every run's state and progress, from the files alone (no torch)."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

from modexp.records import ROW, SUMMARY, Summary, row_from_dict
from modexp.runs.metrics import METRICS_FILE, SUMMARY_FILE, read_json, read_metrics, read_summary
from modexp.runs.failures import INTERRUPTED_FILE
from modexp.runs.runner import PLAN_FILE, run_state
from modexp.spec import SpecError, load_spec


def experiment_dir(path: str | Path, results: str | Path = "results", overrides=()) -> Path:
    """A results folder as given, or results/<name> for a spec file (its `--set` overrides
    applied: one may rename the experiment)."""
    path = Path(path)
    if path.is_file() and path.suffix in (".yaml", ".yml"):
        return Path(results) / load_spec(path, overrides).name
    if not path.is_dir():
        raise SpecError(str(path), ["no such results folder or spec file"])
    if overrides:
        raise SpecError("--set", [f"--set: {path} is a results folder, whose runs keep the spec "
                                  "they were trained with; --set applies to a spec file"])
    return path


def sweep_status(path: str | Path, results: str | Path = "results", overrides=()) -> list[dict]:
    """One dict per planned run: run_id, state, steps, progress in FLOPs, final eval losses."""
    exp = experiment_dir(path, results, overrides)
    if not (exp / PLAN_FILE).exists():
        raise SpecError(str(exp), [f"no {PLAN_FILE}: nothing has been run here yet (modexp run SPEC)"])
    try:
        runs = read_json(exp / PLAN_FILE)["runs"]
        return [_one(exp / r["run_id"], r) for r in runs]
    except (ValueError, KeyError, TypeError) as e:
        raise SpecError(str(exp / PLAN_FILE), [f"garbled ({type(e).__name__}); rerun "
                                               "`modexp run SPEC` to write it again"]) from None


def _one(run_dir: Path, plan: dict) -> dict:
    """A run's row; a garbled file makes the state 'corrupt' with the reason in 'error'.
    Rows and summary are read through records.py: a row without an integer step is passed
    over (a fixture's or a torn writer's), a file of another schema makes the run corrupt."""
    state, problems = run_state(run_dir), []
    rows, summary, note = [], Summary(state=None), {}
    try:
        rows = read_metrics(run_dir / METRICS_FILE) if (run_dir / METRICS_FILE).exists() else []
        rows = [row_from_dict(r, f"row {i + 1}") for i, r in enumerate(rows)
                if isinstance(r, dict) and isinstance(r.get(ROW.step), int)]
        flops = max((float(r.flops or 0) for r in rows), default=0)
    except (ValueError, TypeError) as e:
        problems.append(f"{METRICS_FILE}: {str(e).removeprefix(str(run_dir / METRICS_FILE) + ': ')}")
        rows, flops = [], 0
    if state == "corrupt":
        problems.append(f"{SUMMARY_FILE} is not valid JSON or not a summary of a schema this "
                        "modexp reads; `modexp run` rewrites it from the checkpoint")
    elif (run_dir / SUMMARY_FILE).exists():
        summary = read_summary(run_dir / SUMMARY_FILE)
    if state == "interrupted" and (run_dir / INTERRUPTED_FILE).exists():
        try:
            note = read_json(run_dir / INTERRUPTED_FILE)
        except ValueError:
            note = {}
    return {"run_id": plan["run_id"], "state": "corrupt" if problems else state,
            "step": max((r.step for r in rows), default=0),
            "steps": plan["steps"], "flops": flops, "total_flops": plan["total_flops"],
            "progress": flops / plan["total_flops"],
            SUMMARY.final_eval_loss: summary.final_eval_loss,
            SUMMARY.final_eval_loss_causal: summary.final_eval_loss_causal,
            SUMMARY.routed_frac_causal: summary.routed_frac_causal,
            "decision_acc": summary.predictor_acc_causal,
            "decision_acc_ci": summary.predictor_acc_causal_ci,
            "capacity": summary.routed_frac_topk,  # per routed layer, k/T
            "error": "; ".join(problems) or summary.error or note.get("error")}


def _routed(r: dict) -> Text:
    """Causal routed fraction per layer vs capacity; '!' marks a layer > 2 points off."""
    fracs, caps = r.get(SUMMARY.routed_frac_causal), r.get("capacity")
    out = Text()
    if not fracs or not caps or len(fracs) != len(caps):
        return out
    for i, (f, c) in enumerate(zip(fracs, caps)):
        out.append(f"{' ' if i else ''}{f:.1%}/{c:.1%}")
        if abs(f - c) > 0.02:
            out.append("!", style="red")
    return out


def _accuracy(r: dict) -> str:
    """The causal decision's accuracy against top-k, with its 95% interval over sequences."""
    acc, ci = r.get("decision_acc"), r.get("decision_acc_ci")
    if acc is None:
        return ""
    return f"{acc:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def print_status(rows: list[dict], console: Console) -> None:
    """A rich table of the sweep; every cell is text (Text), never markup: an error may hold
    brackets."""
    t = Table(title="sweep status")
    for col in ("run id", "state", "steps", "FLOPs done", "eval loss", "causal loss",
                "routed causal/capacity", "causal decision acc [95%]", "error"):
        t.add_column(col)
    colour = {"done": "green", "failed": "red", "running": "cyan", "interrupted": "yellow",
              "corrupt": "red"}
    for r in rows:
        fmt = lambda v: "" if v is None else f"{v:.4f}"  # noqa: E731
        t.add_row(Text(r["run_id"]), Text(r["state"], style=colour.get(r["state"], "white")),
                  f"{r['step']}/{r['steps']}", f"{100 * r['progress']:.0f}%",
                  fmt(r[SUMMARY.final_eval_loss]), fmt(r[SUMMARY.final_eval_loss_causal]), _routed(r),
                  Text(_accuracy(r)), Text(r["error"] or ""))
    console.print(t)
