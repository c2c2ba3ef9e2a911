"""Results folder -> tables: the runs and their metrics, validated (fits: modexp/analysis/isoflop.py).

Reads only what the trainer writes (plan.json, <run>/run.json, metrics.jsonl, summary.json;
through their records, modexp/records.py), so it never imports torch, and it imports no matplotlib either: `modexp status`
style callers get the tables without a plotting stack. Every problem with the folder is
collected and raised at once as SpecError (the CLI's exit code 2).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from modexp import variants
from modexp.records import (EVAL, FAILED, FINISHED, KIND_KEY, ROW, SUMMARY, EvalRow, RecordError, RunRecord,
                            Summary, row_from_dict, row_problems)
from modexp.runs.metrics import METRICS_FILE, RUN_FILE, SUMMARY_FILE, read_json, read_metrics
from modexp.spec import SpecError

PLAN_FILE = "plan.json"
PLAN_KEYS = ("run_id", "budget", "model", "variant", "kind", "seed", "params",
             "forward_flops_per_token", "flops_per_step", "steps")
# the row fields the frames hold as numbers (NaN where null or absent) and as lists
NUMBER_KEYS = (ROW.step, ROW.tokens, ROW.flops, ROW.train_loss, ROW.lm_loss, ROW.aux_loss,
               ROW.predictor_loss, ROW.lr, ROW.grad_norm, ROW.wall_time, ROW.tokens_per_s,
               ROW.budget_frac, ROW.eval_loss, ROW.eval_loss_causal, ROW.predictor_acc,
               ROW.predictor_precision, ROW.predictor_recall, ROW.predictor_acc_causal,
               ROW.predictor_precision_causal, ROW.predictor_recall_causal)
LIST_KEYS = (ROW.routed_frac, ROW.routed_frac_causal, ROW.routed_frac_topk)
MAX_PROBLEMS_PER_FILE = 5  # one broken writer should not bury the other messages
ONE_FAMILY = "all"  # the family of runs whose depth no file records (one parabola for all)


@dataclass
class Results:
    """One experiment's results: a row per run (planned or found) and each run's metric rows."""

    root: Path
    experiment: str
    runs: pd.DataFrame
    metrics: dict[str, pd.DataFrame]
    warnings: list[str]

    @property
    def missing(self) -> list[str]:
        """Planned run ids with no metric rows yet."""
        return list(self.runs.loc[self.runs["state"] == "missing", "run_id"])

    def rows(self, run_id: str, kind: str) -> pd.DataFrame:
        """A run's 'train' or 'eval' rows, in step order (empty if none)."""
        m = self.metrics.get(run_id)
        if m is None or m.empty:
            return pd.DataFrame(columns=["step", "flops"])
        return m[m[KIND_KEY] == kind].sort_values(ROW.step).reset_index(drop=True)


# ---------------------------------------------------------------- loading and validation


def load_results(root: str | Path) -> Results:
    """Read a results folder; raise SpecError listing every problem (nothing is written)."""
    root = Path(root)
    if not root.is_dir():
        what = "is a file, not a folder" if root.exists() else "folder not found"
        raise SpecError(str(root), [f"{what} (expected results/<experiment>/ from `modexp run`)"])
    problems: list[str] = []
    plan_runs, experiment = _read_plan(root, problems)
    dirs = sorted(d for d in root.iterdir() if d.is_dir() and _is_run_dir(d))
    if not plan_runs and not dirs and not problems:
        problems.append(f"no {PLAN_FILE} and no run folders: nothing to plot yet "
                        "(start the sweep with `modexp run SPEC`)")
    entries = {p["run_id"]: p for p in plan_runs}
    found: dict[str, tuple[Summary | None, list[dict]]] = {}
    for d in dirs:
        plan, summary, rows = _read_run(root, d, entries.get(d.name), problems)
        if plan is not None:
            entries[plan["run_id"]] = plan
            found[plan["run_id"]] = (summary, rows)
    if not problems and not any(rows for _, rows in found.values()):
        problems.append(f"no run has any metrics yet ({len(entries)} planned, "
                        f"{len(found)} started): nothing to plot")
    if problems:
        raise SpecError(str(root), problems)
    return _assemble(root, experiment or root.name, entries, found)


def _is_run_dir(d: Path) -> bool:
    return any((d / f).exists() for f in (RUN_FILE, METRICS_FILE, SUMMARY_FILE))


def _read_json_file(root: Path, path: Path, problems: list[str]) -> dict | None:
    """A JSON object from disk, or None with a problem naming the file."""
    try:
        obj = read_json(path)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        problems.append(f"{path.relative_to(root)}: not valid JSON ({e})")
        return None
    if not isinstance(obj, dict):
        problems.append(f"{path.relative_to(root)}: expected a JSON object, got {type(obj).__name__}")
        return None
    return obj


def _read_record(root: Path, path: Path, record, problems: list[str]):
    """A run.json or summary.json as its record (records.py), or None with a problem naming
    the file: not JSON, or a layout no reader takes (another schema, a field's type)."""
    obj = _read_json_file(root, path, problems)
    if obj is None:
        return None
    try:
        return record.from_dict(obj, str(path.relative_to(root)))
    except RecordError as e:
        problems.append(str(e))
        return None


def _plan_problems(entry: object, where: str) -> list[str]:
    if not isinstance(entry, dict):
        return [f"{where}: a plan entry must be an object"]
    missing = [k for k in PLAN_KEYS if k not in entry]
    return [f"{where}: plan entry lacks {', '.join(missing)}"] if missing else []


def _read_plan(root: Path, problems: list[str]) -> tuple[list[dict], str | None]:
    obj = _read_json_file(root, root / PLAN_FILE, problems) if (root / PLAN_FILE).exists() else None
    runs = (obj or {}).get("runs", [])
    if not isinstance(runs, list):
        problems.append(f"{PLAN_FILE}: 'runs' must be a list of plan entries")
        runs = []
    bad = [p for i, e in enumerate(runs) for p in _plan_problems(e, f"{PLAN_FILE} runs[{i}]")]
    problems += bad
    spec = (obj or {}).get("spec")
    runs = [] if bad else [{**e, **_shape(e, spec, f"{PLAN_FILE} runs[{i}]", problems)}
                           for i, e in enumerate(runs)]
    return runs, (obj or {}).get("experiment")


def _shape(plan: dict, spec: object, where: str, problems: list[str]) -> dict:
    """The run's family and depth: its plan entry's, else (results written before plan
    entries carried them) its resolved spec's model, else one family for every run. A plan
    entry whose depth disagrees with its own spec's model is a problem, not a choice."""
    models = spec.get("models") if isinstance(spec, dict) else None
    model = next((m for m in models if isinstance(m, dict) and m.get("name") == plan["model"]),
                 None) if isinstance(models, list) else None
    depth = model.get("n_layers") if model else None
    depth = depth if _is_int(depth) else None
    n_layers, family = plan.get("n_layers"), plan.get("family")
    if not (n_layers is None or _is_int(n_layers)) or not (family is None or isinstance(family, str)):
        problems.append(f"{where}: plan entry's n_layers must be an integer and family a string, "
                        f"got {n_layers!r} and {family!r}")
        return {}
    if n_layers is not None and depth is not None and n_layers != depth:
        problems.append(f"{where}: plan entry has n_layers {n_layers} but its spec's model "
                        f"{plan['model']} has {depth}")
    n_layers = n_layers if n_layers is not None else depth
    family = family or (model or {}).get("family") or (
        f"L{n_layers}" if n_layers is not None else ONE_FAMILY)
    return {"family": str(family), "n_layers": n_layers}


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _read_run(root: Path, d: Path, planned: dict | None, problems: list[str]):
    """(plan entry, summary, metric rows) of one run folder; the plan from run.json wins."""
    plan = planned
    if (d / RUN_FILE).exists():
        run = _read_record(root, d / RUN_FILE, RunRecord, problems)
        if run is not None:
            bad = _plan_problems(run.plan, f"{d.name}/{RUN_FILE}")
            problems += bad
            plan = None if bad else {**run.plan, "settings": _settings(run.to_dict()),
                                     **_shape(run.plan, run.spec, f"{d.name}/{RUN_FILE}",
                                              problems)}
    elif planned is None:
        problems.append(f"{d.name}: no {RUN_FILE} and not in {PLAN_FILE}, so its model and "
                        "variant are unknown")
    summary = _read_record(root, d / SUMMARY_FILE, Summary, problems) if (d / SUMMARY_FILE).exists() else None
    rows = _read_rows(root, d / METRICS_FILE, problems) if (d / METRICS_FILE).exists() else []
    return plan, summary, rows


def _read_rows(root: Path, path: Path, problems: list[str]) -> list[dict]:
    rel = path.relative_to(root)
    try:
        rows = read_metrics(path)
    except (ValueError, UnicodeDecodeError) as e:
        problems.append(f"{rel}: {str(e).removeprefix(f'{path}: ')}")
        return []
    found = [f"{rel} row {i + 1}: {p}" for i, r in enumerate(rows) for p in row_problems(r)]
    problems += found[:MAX_PROBLEMS_PER_FILE]
    if len(found) > MAX_PROBLEMS_PER_FILE:
        problems.append(f"{rel}: {len(found) - MAX_PROBLEMS_PER_FILE} more bad rows")
    # the rows as their records give them back: declared keys only, as the file had them
    return [] if found else [row_from_dict(r).to_dict() for r in rows]


def _assemble(root: Path, experiment: str, entries: dict, found: dict) -> Results:
    records, metrics, warnings = [], {}, []
    for run_id, plan in entries.items():
        summary, rows = found.get(run_id, (None, []))
        frame = _metrics_frame(rows, plan)
        if not frame.empty:
            metrics[run_id] = frame
        rec = _run_record(plan, summary, frame)
        warnings += _run_warnings(rec)
        records.append(rec)
    mixed = mixed_settings(records)
    if mixed:
        raise SpecError(str(root), mixed)
    runs = pd.DataFrame.from_records(records)
    runs["n_layers"] = pd.to_numeric(runs["n_layers"], errors="coerce")  # None -> NaN
    return Results(root, experiment, runs, metrics, warnings)


def _settings(run: dict) -> str | None:
    """The run's settings fingerprint (fingerprint.py), None if run.json cannot give one."""
    from modexp.runs.fingerprint import of_run_file

    try:
        return of_run_file(run)["settings"]
    except (KeyError, TypeError, StopIteration, ValueError):
        return None


def mixed_settings(records: list[dict]) -> list[str]:
    """One problem per (budget, model, variant) whose seeds were trained with other settings:
    their mean would mix two experiments, so nothing is averaged or plotted."""
    groups: dict[tuple, dict[str, list[str]]] = {}
    for r in records:
        if r.get("settings"):
            key = (r["budget"], r["model"], r["variant"])
            groups.setdefault(key, {}).setdefault(r["settings"], []).append(r["run_id"])
    return [f"{' vs '.join(', '.join(ids) for ids in by.values())}: same budget, model and variant "
            "but other settings (run.json fingerprints differ); move one set to another results "
            "folder before plotting" for by in groups.values() if len(by) > 1]


def require_finished(res: Results) -> None:
    """SpecError unless some run finished: figures and fits need at least one final loss."""
    if not res.runs["complete"].any():
        counts = res.runs["state"].value_counts().to_dict()
        raise SpecError(str(res.root), [
            "no run has finished yet (" + ", ".join(f"{n} {s}" for s, n in counts.items()) +
            "): nothing to plot; `modexp status` shows progress"])


def _metrics_frame(rows: list[dict], plan: dict) -> pd.DataFrame:
    if not rows:
        return pd.DataFrame()
    df = pd.DataFrame.from_records(rows)
    for k in NUMBER_KEYS:
        df[k] = pd.to_numeric(df[k], errors="coerce") if k in df else np.nan
    # flops are analytic (step x flops_per_step); recompute where a row left them null
    df["flops"] = df["flops"].fillna(df["step"] * float(plan["flops_per_step"]))
    return df


def _last(frame: pd.DataFrame, kind: str, key: str):
    """The latest non-null value of `key` among a run's `kind` rows (None if none)."""
    if frame.empty or key not in frame:
        return None
    vals = frame.loc[frame[KIND_KEY] == kind].sort_values(ROW.step)[key].dropna()
    return vals.iloc[-1] if len(vals) else None


def _finite(v) -> float:
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else math.nan


def _entry(plan: dict) -> str | None:
    """The run's registry entry (plan files from before the registry: from kind and router);
    None for a kind no entry has (a variant registered only where the run was trained)."""
    try:
        return variants.of_run(plan).name
    except KeyError:
        return None


def _default_router(kind: str) -> str | None:
    """The router a plan entry without one ran (plan files from before routers were recorded):
    its spec class's default, asked of the registry (MoD's learned); None without a router."""
    cls = variants.config_class(kind)
    field = cls.model_fields.get("router") if cls is not None else None
    return field.default if field is not None else None


def _run_record(plan: dict, summary: Summary | None, frame: pd.DataFrame) -> dict:
    s = summary or Summary(state=None)
    state = s.state if s.state in (FINISHED, FAILED) else "missing" if frame.empty else "partial"
    last_step = int(frame[ROW.step].max()) if not frame.empty else 0
    last_flops = float(frame[ROW.flops].max()) if not frame.empty else 0.0

    def pick(key: str, col: str) -> float:  # the summary's value, else the last eval row's
        v = getattr(s, key)
        return _finite(v) if v is not None else _finite(_last(frame, EvalRow.kind, col))

    loss = pick(SUMMARY.final_eval_loss, EVAL.eval_loss)
    causal = pick(SUMMARY.final_eval_loss_causal, EVAL.eval_loss_causal)
    total = float(plan.get("total_flops") or plan["steps"] * plan["flops_per_step"])
    return {
        "run_id": plan["run_id"], "budget": float(plan["budget"]), "model": plan["model"],
        "variant": plan["variant"], "kind": plan["kind"], "seed": plan["seed"],
        "family": plan.get("family", ONE_FAMILY), "n_layers": plan.get("n_layers"),
        "router": plan.get("router") or _default_router(plan["kind"]),
        "entry": _entry(plan),
        "params": float(plan["params"]),
        "forward_flops_per_token": float(plan["forward_flops_per_token"]),
        "steps": int(plan["steps"]), "total_flops": total, "state": state,
        "last_step": last_step, "budget_frac_done": last_flops / total if total else math.nan,
        SUMMARY.final_eval_loss: loss, SUMMARY.final_eval_loss_causal: causal,
        "error": s.error, "capacities": plan.get("capacities"),
        "settings": plan.get("settings"),  # fingerprint of the settings, seed left out
        "complete": state == "done" and math.isfinite(loss),
    }


def _run_warnings(r: dict) -> list[str]:
    rid = r["run_id"]
    if r["state"] == "failed":
        return [f"{rid}: failed at step {r['last_step']} ({r['error'] or 'no error recorded'}); "
                "excluded from the table and fits"]
    if r["state"] == "partial":
        return [f"{rid}: running or interrupted at {100 * r['budget_frac_done']:.0f}% of its budget; "
                "plotted, excluded from the table and fits"]
    if r["state"] == "done" and not r["complete"]:
        return [f"{rid}: done but its final eval loss is null (diverged?); "
                "excluded from the table and fits"]
    return []
