"""`modexp run`: train every selected run of a spec in turn; nothing lost, nothing redone.

Finished runs are skipped; interrupted ones continue from their last checkpoint; a run that
raises or diverges is recorded as failed (summary.json + error.log) and the sweep goes on; a
per-run file lock keeps two processes (reruns, cluster shards) off the same run.
"""

from __future__ import annotations

import fcntl
import fnmatch
import os
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from modexp.corpus import SourceError
from modexp.metrics import RUN_FILE, SUMMARY_FILE, MetricsWriter, read_json, write_json_atomic
from modexp.plan import Plan, RunPlan, plan_file
from modexp.spec import ExperimentSpec, SpecError, spec_to_dict

PLAN_FILE, CKPT_FILE, LOCK_FILE = "plan.json", "ckpt.pt", ".lock"


@dataclass
class SweepReport:
    """What one `modexp run` did, run id -> outcome."""

    experiment_dir: Path
    outcomes: dict[str, str] = field(default_factory=dict)  # done | skipped | failed | locked

    @property
    def failed(self) -> list[str]:
        """Runs that failed in this invocation."""
        return [r for r, o in self.outcomes.items() if o == "failed"]


@contextmanager
def run_lock(run_dir: Path):
    """Hold an exclusive, non-blocking flock on run_dir/.lock; yields False if already held."""
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / LOCK_FILE, os.O_CREAT | os.O_RDWR, 0o644)
    if not _try_lock(fd):
        os.close(fd)
        yield False
        return
    try:
        yield True
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _try_lock(fd: int, tries: int = 4) -> bool:
    """Exclusive flock, retried briefly: a `modexp status` probe holds it for microseconds."""
    for i in range(tries):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if i < tries - 1:
                time.sleep(0.05)
    return False


def is_locked(run_dir: Path) -> bool:
    """True while some process trains this run (a shared-lock probe: works on read-only mounts)."""
    try:
        fd = os.open(run_dir / LOCK_FILE, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # also drops the probe's own shared lock
    return False


def select_runs(plan: Plan, only: list[str] | None = None, shard: tuple[int, int] | None = None) -> list[RunPlan]:
    """Runs matching any --only id/glob, then every n-th of those in plan order for shard i/n."""
    runs = [r for r in plan.runs if not only or any(fnmatch.fnmatch(r.run_id, g) for g in only)]
    if shard is not None:
        i, n = shard
        runs = [r for k, r in enumerate(runs) if k % n == i]
    return runs


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """'i/n' -> (i, n) with 0 <= i < n; raise SpecError otherwise."""
    if text is None:
        return None
    try:
        i, n = (int(p) for p in text.split("/"))
        assert 0 <= i < n
    except (ValueError, AssertionError):
        raise SpecError("--shard", [f"--shard: expected i/n with 0 <= i < n, got {text!r}"]) from None
    return i, n


def write_plan_file(exp_dir: Path, spec: ExperimentSpec, plan: Plan) -> None:
    """results/<experiment>/plan.json: every planned run (what status and plot read)."""
    write_json_atomic(exp_dir / PLAN_FILE, {"experiment": spec.name, "spec": spec_to_dict(spec),
                                            "runs": [r.to_dict() for r in plan.runs]})


def check_existing(exp_dir: Path, spec_path: str, runs: list[RunPlan]) -> None:
    """Refuse to continue a run whose folder was planned differently (never mix two plans)."""
    problems = []
    for r in runs:
        f = exp_dir / r.run_id / RUN_FILE
        if f.exists() and read_json(f)["plan"] != _jsonable(r.to_dict()):
            problems.append(f"{r.run_id}: {f} holds a different plan for this run id (the spec "
                            "changed); rename the experiment or move that folder away")
    if problems:
        raise SpecError(spec_path, problems)


def _jsonable(d: dict) -> dict:
    import json

    return json.loads(json.dumps(d))


def run_state(run_dir: Path) -> str:
    """planned | running | interrupted | done | failed."""
    summary = run_dir / SUMMARY_FILE
    if summary.exists():
        return read_json(summary)["state"]
    if not (run_dir / RUN_FILE).exists():
        return "planned"
    return "running" if is_locked(run_dir) else "interrupted"


def prepare(spec_path: str | Path, results: str | Path, only=None, shard=None, world=None):
    """Validate everything a sweep needs before any training: spec, plan, data, old folders.

    `world`: the process count (default: torchrun's WORLD_SIZE), which must split the batch.
    """
    spec, plan = plan_file(spec_path)
    if not select_runs(plan, only):
        raise SpecError(str(spec_path), [f"--only: no run id matches {only}; "
                                         f"runs: {', '.join(r.run_id for r in plan.runs)}"])
    runs = select_runs(plan, only, shard)  # may be empty: an array bigger than the sweep
    world = int(os.environ.get("WORLD_SIZE", 1)) if world is None else world
    from modexp.train import split_batch

    try:
        split_batch(spec.train.batch_size, spec.train.micro_batch_size, world)
    except ValueError as e:
        raise SpecError(str(spec_path), [str(e)]) from None
    exp_dir = Path(results) / spec.name
    check_existing(exp_dir, str(spec_path), runs)
    from modexp.data import TokenData

    try:
        data = TokenData(spec.data.source, spec.data.seq_len, spec.data.val_fraction)
    except (SourceError, ValueError) as e:
        raise SpecError(str(spec_path), [f"data.source: {e}"]) from None
    return spec, plan, runs, exp_dir, data


def train_one(spec: ExperimentSpec, run: RunPlan, run_dir: Path, data, ctx, on_step=None) -> dict:
    """Build the model, resume if a checkpoint exists, train to the end; return the summary."""
    import torch

    from modexp.model import build_model
    from modexp.train import Trainer

    model_cfg = next(m for m in spec.models if m.name == run.model)
    torch.manual_seed(run.seed)  # the seed fixes init; data order is fixed by (seed, step)
    model = build_model(model_cfg, spec.variants[run.variant], run.vocab)
    writer = MetricsWriter(run_dir) if ctx.is_main else _NullLogger()
    trainer = Trainer(model, run, spec.train, data, writer, run_dir / CKPT_FILE, ctx, on_step)
    step = trainer.resume()
    if ctx.is_main:
        writer.truncate_after(step)  # rows after the checkpoint are redone, not duplicated
    return trainer.fit()


class _NullLogger:
    def log(self, row: dict) -> None:
        pass


def record_failure(run_dir: Path, run: RunPlan, exc: BaseException) -> None:
    """summary.json with state failed and the error; the traceback in error.log."""
    (run_dir / "error.log").write_text("".join(traceback.format_exception(exc)))
    write_json_atomic(run_dir / SUMMARY_FILE, {"state": "failed", "error": f"{type(exc).__name__}: {exc}",
                                               "run_id": run.run_id})


def _on_every_rank(exc: BaseException) -> bool:
    """Divergence is decided on globally reduced losses, so every rank raises it at one step."""
    from modexp.train import Diverged

    return isinstance(exc, Diverged)


def _agree(ctx, value):
    """Rank 0's decision, shared with every rank (so all ranks train or skip the same runs)."""
    if ctx.world == 1:
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _decide(run_dir: Path, retry_failed: bool) -> str:
    """train | done | failed (skip) for a run before its lock is taken."""
    state = run_state(run_dir)
    if state == "done" or (state == "failed" and not retry_failed):
        return state
    if state == "failed":  # keep the failure on record, then resume from the last checkpoint
        os.replace(run_dir / SUMMARY_FILE, run_dir / "summary.failed.json")
    return "train"


def run_sweep(spec_path, results="results", only=None, shard=None, retry_failed=False,
              device="auto", progress=None, peak_tflops=None) -> SweepReport:
    """Train every selected run of a spec (what `modexp run` calls). `progress`: a Progress UI.

    Under torchrun every rank calls this; rank 0 decides (locks, skips), writes and reports.
    """
    from modexp.train import setup_context, teardown_context

    spec, plan, runs, exp_dir, data = prepare(spec_path, results, only, shard)
    ctx = setup_context(device, peak_tflops)  # peak_tflops: for MFU (None: known or measured)
    report = SweepReport(exp_dir)
    if ctx.is_main:
        write_plan_file(exp_dir, spec, plan)
    ui = progress if progress is not None and ctx.is_main else _QuietProgress()
    ui.start_sweep(runs)
    for run in runs:
        run_dir = exp_dir / run.run_id
        with (run_lock(run_dir) if ctx.is_main else _held()) as got:
            decision = _agree(ctx, _decide(run_dir, retry_failed) if got else "locked")
            if decision != "train":
                report.outcomes[run.run_id] = decision if decision == "locked" else "skipped"
                ui.skip_run(run, decision)
                continue
            report.outcomes[run.run_id] = _train_locked(spec, run, run_dir, data, ctx, ui)
    ui.end_sweep()
    teardown_context(ctx)  # on errors the process exits instead and torchrun reaps the group
    return report


@contextmanager
def _held():
    yield True


def _train_locked(spec, run, run_dir, data, ctx, ui) -> str:
    """Train one run under its lock; record the outcome in summary.json (rank 0)."""
    if ctx.is_main and not (run_dir / RUN_FILE).exists():
        write_json_atomic(run_dir / RUN_FILE, {"plan": run.to_dict(), "spec": spec_to_dict(spec),
                                               "data": data.source.fingerprint()})
    ui.start_run(run)
    try:
        summary = train_one(spec, run, run_dir, data, ctx, on_step=ui.step)
    except KeyboardInterrupt:
        raise  # interrupted, not failed: the checkpoint continues it
    except Exception as exc:  # a run's failure must not stop the sweep
        if ctx.world > 1 and not _on_every_rank(exc):
            # this rank's own error, or a peer's crash seen as a lost connection: the others
            # wait in a collective, so end the job (torchrun stops every rank); the run is
            # left interrupted, to resume from its checkpoint
            raise
        if ctx.is_main:
            record_failure(run_dir, run, exc)
        ui.end_run(run, {"state": "failed", "error": f"{type(exc).__name__}: {exc}"})
        return "failed"
    if ctx.is_main:
        write_json_atomic(run_dir / SUMMARY_FILE, {"run_id": run.run_id, **summary})
    ui.end_run(run, summary)
    return "done"


class _QuietProgress:
    """The progress interface, doing nothing (tests, non-main ranks)."""

    def start_sweep(self, runs): ...
    def start_run(self, run): ...
    def step(self, step, loss): ...
    def skip_run(self, run, why): ...
    def end_run(self, run, summary): ...
    def end_sweep(self): ...
