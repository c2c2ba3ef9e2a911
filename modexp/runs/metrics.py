"""Run files on disk: atomic JSON, an append-only metrics log, and their readers.

Layout of one run, results/<experiment>/<run_id>/:
- run.json      {"plan": <plan entry>, "spec": <resolved spec>, "data": <size, sha256>,
                "fingerprint": {"sha256", "settings", "fields"}}  written once, before training
                (fingerprint.py says which settings it covers)
- metrics.jsonl one JSON object per line; "kind" is "train" or "eval" (see MetricsWriter)
- summary.json  {"state": "done"|"failed"|..., "final_eval_loss": ..., ...} at the run's end
- ckpt.pt, ckpt.prev.pt, ckpt.sha256.json   the last two checkpoints, checksummed (training/checkpoint.py)
- error.log (failed), interrupted.json (stopped by the machine; failures.py)
No torch here: plots and status read these files without importing torch. The atomic JSON
writer and reader live at the bottom of the package (modexp/files.py), for the checkpoints too.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from modexp.files import read_json, strict_json, write_json_atomic, write_text_atomic  # noqa: F401 (run-file readers import them from here)

RUN_FILE, METRICS_FILE, SUMMARY_FILE = "run.json", "metrics.jsonl", "summary.json"


class MetricsWriter:
    """Append-only metrics.jsonl for one run.

    Train rows: kind="train", step, tokens, flops (cumulative training FLOPs, analytic),
    train_loss, lm_loss, aux_loss, predictor_loss, lr, grad_norm, routed_frac (list, one per
    routed layer), wall_time (s since the run started, across resumes), tokens_per_s.
    Eval rows: kind="eval", step, tokens, flops, budget_frac, eval_loss (top-k routing),
    eval_sequences (held-out sequences scored: more at the last evaluation) and for MoD
    eval_loss_causal, predictor_acc, predictor_precision, predictor_recall, threshold and
    routed_frac_causal (lists per routed layer), with 95% intervals over the held-out sequences:
    predictor_acc_causal_ci [lo, hi] and routed_frac_causal_ci (one [lo, hi] per routed layer);
    where the causal decisions route in the sequence: pos_bin_starts (the first position of each
    of min(16, seq_len) near-equal position bins) and routed_frac_causal_pos (per routed layer,
    each bin's fraction of its tokens routed on the causal pass; evaluation.position_bins).
    Rows written before these two keys existed lack them (figures then skip that panel).
    On resume, `truncate_after(step)` drops rows logged after the checkpoint, so the log
    continues with no duplicated or missing rows.
    """

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / METRICS_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def log(self, row: dict) -> None:
        """Append one row and flush it to disk."""
        with open(self.path, "a") as f:
            f.write(json.dumps(strict_json(row), allow_nan=False) + "\n")
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
