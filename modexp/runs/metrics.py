"""Run files on disk: atomic JSON, an append-only metrics log, and their readers.

Layout of one run, results/<experiment>/<run_id>/ (every field: modexp/records.py):
- run.json      records.RunRecord: {"plan": <plan entry>, "spec": <resolved spec>,
                "data": <size, sha256>, "fingerprint": {"sha256", "settings", "fields"},
                "schema"}  written once, before training (fingerprint.py says which settings
                it covers)
- metrics.jsonl one JSON object per line: records.TrainRow ("kind": "train") or
                records.EvalRow ("kind": "eval")
- summary.json  records.Summary: {run_id, state: done | failed, final_eval_loss, ...}
                at the run's end
- ckpt.pt, ckpt.prev.pt, ckpt.sha256.json   the last two checkpoints, checksummed (training/checkpoint.py)
- error.log (failed), interrupted.json (stopped by the machine; failures.py)
No torch here: plots and status read these files without importing torch. The atomic JSON
writer and reader live at the bottom of the package (modexp/files.py), for the checkpoints too.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from modexp.records import Row, RunRecord, Summary, row_from_dict
from modexp.files import read_json, strict_json, write_json_atomic, write_text_atomic  # noqa: F401 (run-file readers import them from here)

RUN_FILE, METRICS_FILE, SUMMARY_FILE = "run.json", "metrics.jsonl", "summary.json"


class MetricsWriter:
    """Append-only metrics.jsonl for one run: records.TrainRow and records.EvalRow, one per
    line (records.py declares and documents every field).

    On resume, `truncate_after(step)` drops rows logged after the checkpoint, so the log
    continues with no duplicated or missing rows.
    """

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / METRICS_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def log(self, row: Row | dict) -> None:
        """Append one row (a record, or a dict written as given: fixtures, old rows) and flush
        it to disk."""
        obj = row if isinstance(row, dict) else row.to_dict()
        with open(self.path, "a") as f:
            f.write(json.dumps(strict_json(obj), allow_nan=False) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def truncate_after(self, step: int) -> None:
        """Keep only rows with step <= `step` (and drop a torn last line)."""
        rows = [r for r in read_metrics(self.path) if r["step"] <= step] if self.path.exists() else []
        text = "".join(json.dumps(r) + "\n" for r in rows)
        write_text_atomic(self.path, text)


    def last_step(self) -> int:
        """The highest step logged so far (0 if none)."""
        rows = read_metrics(self.path) if self.path.exists() else []
        return max((r["step"] for r in rows if isinstance(r, dict) and isinstance(r.get("step"), int)),
                   default=0)


def read_metrics(path: str | Path) -> list[dict]:
    """Rows of a metrics.jsonl; a torn final line (killed mid-write) is ignored."""
    rows = []
    try:
        lines = Path(path).read_text().splitlines()
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not text (binary garbage?)") from None
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except ValueError:
            if i == len(lines) - 1:
                break
            raise ValueError(f"{path}: line {i + 1} is not valid JSON") from None
    return rows


def read_rows(path: str | Path) -> list[Row]:
    """A metrics.jsonl's rows as records; ValueError (one line: the file, the row, the
    field and what it allows) for a row neither layout reader takes."""
    return [row_from_dict(r, f"{path} row {i + 1}") for i, r in enumerate(read_metrics(path))]


def read_summary(path: str | Path) -> Summary:
    """A summary.json as its record (ValueError naming the file if it is not one)."""
    return Summary.from_dict(read_json(path), str(path))


def read_run(path: str | Path) -> RunRecord:
    """A run.json as its record (ValueError naming the file if it is not one)."""
    return RunRecord.from_dict(read_json(path), str(path))
