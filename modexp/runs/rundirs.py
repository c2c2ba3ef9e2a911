"""The runs already on disk against the plan about to run: never mix two settings in one folder.

Before `modexp run` writes anything, every run folder of the experiment (selected or not, since
plan.json is rewritten for all of them) is compared with the new plan by fingerprint
(modexp/runs/fingerprint.py). A difference is refused (exit 2) with the fields that differ and the
ways out: a new experiment name, or `--move-aside`, which moves the differing folders (and the
old plan.json) to results/<name>.aside-<UTC time>/ and trains them afresh.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from modexp.runs import fingerprint as fp
from modexp.records import RecordError
from modexp.runs.metrics import RUN_FILE, read_run
from modexp.spec import SpecError

PLAN_FILE = "plan.json"
SHARED = ("train", "data", "flops")  # fields every run of one spec shares
MAX_LISTED = 6


def check_results_root(results: str | Path) -> None:
    """--results must be a folder we can write (or creatable): else exit 2 before training."""
    root = Path(results)
    if root.exists() and not root.is_dir():
        raise SpecError("--results", [f"{root} is a file; give a folder (it is "
                                      "created if missing)"])
    probe = root
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise SpecError("--results", [f"{probe} is not writable; give a folder you "
                                      "can write"])


def new_fingerprints(spec_dict: dict, runs: list[dict], data: dict) -> dict[str, dict]:
    """run_id -> fingerprint of every planned run."""
    return {r["run_id"]: fp.fingerprint(spec_dict, r, data) for r in runs}


def mismatches(exp_dir: Path, planned: dict[str, dict], spec_dict: dict, data: dict) -> dict[str, str]:
    """run folder name -> what differs, for every folder on disk that disagrees with the plan."""
    if not exp_dir.is_dir():
        return {}
    shared = {k: v for k, v in next(iter(planned.values()))["fields"].items() if k in SHARED}
    found = {}
    for run_file in sorted(exp_dir.glob(f"*/{RUN_FILE}")):
        name = run_file.parent.name
        try:
            old = fp.of_run_file(read_run(run_file).to_dict())["fields"]
        except RecordError as e:  # another schema (a newer modexp?), a field of the wrong type
            found[name] = f"{RUN_FILE} is unreadable ({e})"
            continue
        except (OSError, ValueError, KeyError, TypeError, StopIteration) as e:
            found[name] = f"{RUN_FILE} is unreadable ({type(e).__name__})"
            continue
        if name in planned:
            diff = fp.differences(old, planned[name]["fields"])
        else:  # no longer planned: it must still share the spec's settings, as plan.json claims
            diff = fp.differences({k: v for k, v in old.items() if k in SHARED}, shared)
        if diff:
            found[name] = "differs in " + ", ".join(diff[:8]) + (" ..." if len(diff) > 8 else "")
    return found


def refuse(spec_path: str, name: str, found: dict[str, str]) -> None:
    """Raise the exit-2 error naming the differing runs and the ways out."""
    lines = [f"{run}: {why}" for run, why in list(found.items())[:MAX_LISTED]]
    if len(found) > MAX_LISTED:
        lines.append(f"... and {len(found) - MAX_LISTED} more run folder(s)")
    lines.append(f"these runs were trained with other settings than the spec now gives; to keep "
                 f"both, give the experiment a new name (name: {name}-v2), or rerun with "
                 "--move-aside to move the old runs to a dated folder and train afresh")
    raise SpecError(spec_path, lines)


def move_aside(exp_dir: Path, runs: list[str]) -> Path:
    """Move run folders (and the old plan.json) to <exp_dir>.aside-<UTC time>/; return it."""
    dest = exp_dir.with_name(f"{exp_dir.name}.aside-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}")
    dest.mkdir(parents=True, exist_ok=False)
    if (exp_dir / PLAN_FILE).exists():
        shutil.copy2(exp_dir / PLAN_FILE, dest / PLAN_FILE)
    for r in runs:
        os.replace(exp_dir / r, dest / r)
    return dest
