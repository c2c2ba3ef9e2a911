"""`modexp run`: train every selected run of a spec in turn; nothing lost, mixed or redone.

Finished runs are skipped; interrupted ones continue from their newest good checkpoint; a run
that raises or diverges is recorded as failed (summary.json + error.log) and the sweep goes on,
while a failure of the machine (failures.py) leaves the run resumable and stops the sweep; runs
on disk with other settings are refused (rundirs.py, fingerprint.py); a per-run file lock keeps
two processes (reruns, cluster shards) off the same run.
"""

from __future__ import annotations

import fcntl
import json
import fnmatch
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from modexp.data.corpus import SourceError
from modexp.plan import Plan, RunPlan, plan_file
from modexp.records import FAILED, FINISHED, RunRecord, Summary
from modexp.runs import fingerprint, rundirs
from modexp.runs.failures import clear_records, describe, is_environment_error, record_failure, record_interruption
from modexp.runs.metrics import RUN_FILE, SUMMARY_FILE, MetricsWriter, read_json, read_summary, write_json_atomic
from modexp.runs.signals import StopSignals
from modexp.spec import ExperimentSpec, SpecError, spec_to_dict
from modexp.spec.config import AUTO
from modexp.training.checkpoint import CKPT_FILE, clean_stale_temp, retire

PLAN_FILE, LOCK_FILE = rundirs.PLAN_FILE, ".lock"


@dataclass
class SweepReport:
    """What one `modexp run` did, run id -> outcome."""

    experiment_dir: Path
    # done | skipped | failed | failed earlier | locked
    outcomes: dict[str, str] = field(default_factory=dict)
    moved_to: Path | None = None  # where --move-aside put runs with other settings

    @property
    def failed(self) -> list[str]:
        """Selected runs that are failed: in this invocation or earlier (not retried)."""
        return [r for r, o in self.outcomes.items() if o in ("failed", "failed earlier")]


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


def write_plan_file(exp_dir: Path, spec: ExperimentSpec, plan: Plan, prints: dict) -> None:
    """results/<experiment>/plan.json: every planned run and its fingerprint (status, plot)."""
    write_json_atomic(exp_dir / PLAN_FILE, {
        "experiment": spec.name, "spec": spec_to_dict(spec), "runs": [r.to_dict() for r in plan.runs],
        "fingerprints": {k: v["sha256"] for k, v in prints.items()}})


@dataclass
class Prepared:
    """What a sweep needs, all validated before anything is written."""

    spec: ExperimentSpec
    plan: Plan
    runs: list[RunPlan]
    exp_dir: Path
    data: object  # TokenData
    data_print: dict  # the data's size and content hash (run.json "data")
    prints: dict  # run_id -> fingerprint
    aside: dict  # run folder -> why it differs (moved aside with --move-aside, else refused)
    device: str
    # micro_batch_size auto: run id -> the estimate's choice where the sweep runs (the CPU's
    # answer; on CUDA where trials start), and the trials' answers per (model, variant,
    # seq_len, world), found once in this sweep process
    auto: dict = field(default_factory=dict)
    auto_found: dict = field(default_factory=dict)


def run_state(run_dir: Path) -> str:
    """planned | running | interrupted | done | failed | corrupt (summary.json unreadable)."""
    summary = run_dir / SUMMARY_FILE
    if summary.exists():
        try:
            state = read_summary(summary).state
        except (OSError, ValueError):  # garbled JSON or not a summary (records.RecordError)
            return "corrupt"
        return state if state in (FINISHED, FAILED) else "corrupt"
    if not (run_dir / RUN_FILE).exists():
        return "planned"
    return "running" if is_locked(run_dir) else "interrupted"


def prepare(spec_path: str | Path, results: str | Path, only=None, shard=None, world=None,
            device: str = "auto", move_aside: bool = False, overrides=()) -> Prepared:
    """Validate everything a sweep needs before any training: spec (with its `--set`
    overrides), plan, device, memory, data, the results folder and the runs already in it
    (fingerprints).

    `world`: the process count (default: torchrun's WORLD_SIZE), which must split the batch.
    """
    spec, plan = plan_file(spec_path, overrides=overrides)
    if not select_runs(plan, only):
        raise SpecError(str(spec_path), [f"--only: no run id matches {only}; "
                                         f"runs: {', '.join(r.run_id for r in plan.runs)}"])
    runs = select_runs(plan, only, shard)  # may be empty: an array bigger than the sweep
    world = int(os.environ.get("WORLD_SIZE", 1)) if world is None else world
    from modexp.device import resolve_device
    from modexp.training.train import split_batch

    fixed = lambda mb: None if mb == AUTO else mb  # noqa: E731  (auto: split_batch checks the split)
    try:
        if not runs:  # an empty shard still checks the spec's own batch split
            split_batch(spec.train.batch_size, fixed(spec.train.micro_batch_size), world)
        micro = {r.run_id: split_batch(r.batch_size, fixed(r.micro_batch_size), world)[0] for r in runs}
    except ValueError as e:
        raise SpecError(str(spec_path), [str(e)]) from None
    device = resolve_device(device)
    rundirs.check_results_root(results)
    exp_dir = Path(results) / spec.name
    if exp_dir.exists() and not exp_dir.is_dir():
        raise SpecError("--results", [f"{exp_dir} is a file, where the experiment's folder goes"])
    from modexp.memory import fit_problems

    todo = [r for r in runs if run_state(exp_dir / r.run_id) != "done"]
    local = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    auto, none_fit = _auto_by_estimate(spec, [r for r in todo if r.micro_batch_size == AUTO],
                                       micro, device, world, local)
    if none_fit:
        raise SpecError(str(spec_path), none_fit[:rundirs.MAX_LISTED])
    too_big = fit_problems(spec, todo, {**micro, **auto}, device, world, local)
    if too_big:
        more = len(too_big) - rundirs.MAX_LISTED
        raise SpecError(str(spec_path), too_big[:rundirs.MAX_LISTED]
                        + ([f"... and {more} more run(s)"] if more > 0 else []))
    from modexp.data.tokens import TokenData

    try:  # the data, checked against its own records (sizes, token ids, sha256s) first
        with _one_scan_per_node():
            data = TokenData(spec.data.source, spec.data.seq_len, spec.data.val_fraction, spec.data.vocab)
            data_print = fingerprint.data_fingerprint(data.source)
    except (SourceError, ValueError) as e:
        raise SpecError(str(spec_path), [f"data.source: {e}"]) from None
    prints = rundirs.new_fingerprints(spec_to_dict(spec), [r.to_dict() for r in plan.runs], data_print)
    aside = rundirs.mismatches(exp_dir, prints, spec_to_dict(spec), data_print)
    if aside and not move_aside:
        rundirs.refuse(str(spec_path), spec.name, aside)
    busy = [r for r in aside if is_locked(exp_dir / r)]
    if busy:
        raise SpecError(str(spec_path), [f"{', '.join(busy)}: being trained by another process; "
                                         "stop it before --move-aside"])
    return Prepared(spec, plan, runs, exp_dir, data, data_print, prints, aside, device, auto)


def _auto_by_estimate(spec: ExperimentSpec, runs: list[RunPlan], whole: dict, device: str,
                      world: int, local: int) -> tuple[dict, list[str]]:
    """micro_batch_size auto by the memory estimate: run id -> the largest divisor of its
    per-process batch (`whole`: run id -> that batch) whose step fits the free memory where it
    runs (RAM shared by the `local` processes; a GPU each), and one line per run where not
    even one sequence fits. Unknown free memory: the whole per-process batch."""
    from modexp import flops as F
    from modexp.memory import device_available_bytes, micro_batch_by_estimate, size, training_memory

    cuda = device.startswith("cuda")
    free = device_available_bytes(f"cuda:{os.environ.get('LOCAL_RANK', 0)}"
                                  if cuda and world > 1 and ":" not in device else device)
    dtype, here = ("bfloat16", 1) if cuda else ("float32", local)
    shards = world if spec.train.parallel == "fsdp" else 1
    ckpt = spec.train.activation_checkpointing
    models, found, problems = {m.name: m for m in spec.models}, {}, []
    for r in runs:
        if free is None:
            found[r.run_id] = whole[r.run_id]
            continue
        arch = F.arch_from_config(models[r.model], spec.variants[r.variant], r.vocab)
        found[r.run_id] = micro_batch_by_estimate(arch, r.seq_len, whole[r.run_id], free, dtype,
                                                  ckpt, shards, here)
        if not found[r.run_id]:
            one = training_memory(arch, r.seq_len, 1, dtype, ckpt, shards)
            procs = f" x {here} processes" if here > 1 else ""
            problems.append(f"{r.run_id}: micro_batch_size auto: not even one sequence per forward "
                            f"pass fits: a step needs about {one.summary()}{procs}, and {device} "
                            f"has {size(free)} free; allowed: train.activation_checkpointing, "
                            "train.parallel: fsdp over more processes, a smaller model, or a "
                            "machine with more memory")
    return found, problems


def resolve_auto(p: Prepared, run: RunPlan, ctx, say=None) -> RunPlan:
    """The run as trained: micro_batch_size auto replaced by the size chosen for it, and
    recorded in micro_batch_auto. The CPU keeps the estimate's choice; CUDA tries one forward
    and backward there (training/autobatch.py), halving on out-of-memory, once per (model,
    variant, seq_len, world) in this sweep process (activation checkpointing and fsdp keep the
    estimate's: the trial runs the plain model). Every rank takes the smallest rank's answer."""
    if run.micro_batch_size != AUTO:
        return run
    start = p.auto[run.run_id]
    key = (run.model, run.variant, run.seq_len, ctx.world)
    how = f"the memory estimate against {p.device}'s free memory"
    if key in p.auto_found:
        chosen = p.auto_found[key]
    elif (ctx.device.type == "cuda" and not p.spec.train.activation_checkpointing
          and (p.spec.train.parallel != "fsdp" or ctx.world == 1)):
        from modexp.memory import halving_search
        from modexp.training.autobatch import step_fits

        model = next(m for m in p.spec.models if m.name == run.model)
        fits = lambda n: step_fits(model, p.spec.variants[run.variant], run.vocab,  # noqa: E731
                                   run.seq_len, n, ctx.device)
        chosen = halving_search(run.batch_size // ctx.world, start, fits)
        how = f"a trial step on {ctx.device}, from the estimate's {start}"
    else:
        chosen = start
    chosen = _min_over_ranks(ctx, chosen)
    if not chosen:
        raise EnvironmentFailure(run.run_id, [f"{run.run_id}: micro_batch_size auto: not even one "
                                              f"sequence per forward pass fits on {ctx.device}"])
    p.auto_found[key] = chosen
    if ctx.is_main:
        (say or _stderr)(f"{run.run_id}: micro_batch_size auto: {chosen} sequences per forward "
                         f"pass ({how})")
    return replace(run, micro_batch_size=chosen, micro_batch_auto=chosen)


def _min_over_ranks(ctx, value: int) -> int:
    """The smallest of every rank's value (each rank's GPU answers for itself)."""
    if ctx.world == 1:
        return value
    import torch.distributed as dist

    values = [None] * ctx.world
    dist.all_gather_object(values, value)
    return min(values)


def _record_auto(run_dir: Path, run: RunPlan, trained: RunPlan) -> None:
    """run.json's plan entry keeps micro_batch_size auto and the size this start trains with
    (micro_batch_auto); a resume that chooses another rewrites it (execution only)."""
    record = read_json(run_dir / RUN_FILE)
    if record["plan"].get("micro_batch_auto") != trained.micro_batch_auto:
        record["plan"] = {**record["plan"], "micro_batch_size": run.micro_batch_size,
                          "micro_batch_auto": trained.micro_batch_auto}
        write_json_atomic(run_dir / RUN_FILE, record)


@contextmanager
def _one_scan_per_node():
    """Hash and scan the data one process at a time per machine (an flock in modexp's cache
    folder): the first of torchrun's ranks or of a Slurm array's tasks on a node reads the
    whole dataset, the others wait, then find its hashes and token maxima in the cache (keyed
    by the files' stat keys) instead of reading it again each. Works before any process group
    exists, and across array tasks, which share none. Without a writable cache folder each
    process scans on its own."""
    from modexp.cache import cache_dir

    try:
        cache_dir().mkdir(parents=True, exist_ok=True)
        fd = os.open(cache_dir() / ".data-scan.lock", os.O_CREAT | os.O_RDWR, 0o644)
    except OSError:
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def train_one(spec: ExperimentSpec, run: RunPlan, run_dir: Path, data, ctx, on_step=None,
              say=None, loggers=(), on_row=None, stop_signal=None, verbose=False) -> dict:
    """Build the model, resume from the newest good checkpoint, train to the end; the summary
    (summary.json's object: records.Summary.to_dict).

    `say`: where notes on passed-over checkpoints or a start from zero go (never silent).
    `loggers`: dashboards (tensorboard, wandb) fed next to metrics.jsonl, besides the spec's.
    `on_row`: also sees each logged row (the progress line takes the LM loss from it).
    `stop_signal`: returns the name of a stop signal received (the Trainer checkpoints and
    raises Preempted).
    `verbose`: the dashboards' libraries may print their own messages (W&B's; `run -v`)."""
    import torch

    from modexp.models.build import build_model
    from modexp.runs.loggers import Tee
    from modexp.training.train import Trainer

    model_cfg = next(m for m in spec.models if m.name == run.model)
    if spec.train.compile:  # a fresh compile cache per run: a sweep's earlier models would
        torch._dynamo.reset()  # fill dynamo's recompile limit, and every later run train eager
    torch.manual_seed(run.seed)  # the seed fixes init; data order is fixed by (seed, step)
    model = build_model(model_cfg, spec.variants[run.variant], run.vocab, seq_len=run.seq_len,
                        device=ctx.device)
    writer = MetricsWriter(run_dir) if ctx.is_main else _NullLogger()
    names = [*spec.train.loggers, *loggers]
    if ctx.is_main and names:
        plan_row = json.loads(json.dumps(run.to_dict()))  # JSON-able, as run.json holds it
        writer = Tee(writer, names, run_dir, run.run_id, spec_to_dict(spec), plan_row, verbose)
    trainer = Trainer(model, run, spec.train, data, writer if on_row is None else _Tap(writer, on_row),
                      run_dir / CKPT_FILE, ctx, on_step, stop_signal)
    step = trainer.resume()
    if ctx.is_main:
        logged = writer.last_step()
        for note in trainer.notes:
            (say or _stderr)(f"{run.run_id}: {note}")
        if trainer.notes or (step == 0 and logged):
            (say or _stderr)(f"{run.run_id}: " + (f"resuming from step {step}" if step else
                             f"no usable checkpoint (metrics reach step {logged}): starting over "
                             "from step 0"))
        writer.truncate_after(step)  # rows after the checkpoint are redone, not duplicated
    try:
        return trainer.fit().to_dict()
    finally:
        if isinstance(writer, Tee):
            writer.close()


def _verbose(ui) -> bool:
    """Whether the progress UI was asked for more (`run -v`: SweepProgress's verbosity 1)."""
    v = getattr(ui, "verbosity", 0)
    return isinstance(v, int) and v > 0


class _Tap:
    """The Trainer's logger, also handing each row to `see` (metrics.jsonl first)."""

    def __init__(self, inner, see):
        self.inner, self.see = inner, see

    def log(self, row: dict) -> None:
        self.inner.log(row)
        self.see(row)


def _stderr(msg: str) -> None:
    print(f"note: {msg}", file=sys.stderr, flush=True)


class _NullLogger:
    def log(self, row: dict) -> None:
        pass


def _on_every_rank(exc: BaseException) -> bool:
    """Divergence is decided on globally reduced losses, so every rank raises it at one step."""
    from modexp.training.train import Diverged

    return isinstance(exc, Diverged)


def _agree(ctx, value):
    """Rank 0's decision, shared with every rank (so all ranks train or skip the same runs)."""
    if ctx.world == 1:
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _decide(run_dir: Path, retry_failed: bool, say) -> str:
    """train | done | failed (skip) for a run, under its lock."""
    state = run_state(run_dir)
    if state == "done" or (state == "failed" and not retry_failed):
        return state
    if state == "failed":  # keep the failure on record, then resume from the last checkpoint
        os.replace(run_dir / SUMMARY_FILE, run_dir / "summary.failed.json")
    if state == "corrupt":  # the checkpoint still holds the run: resuming rewrites the summary
        os.replace(run_dir / SUMMARY_FILE, run_dir / "summary.corrupt.json")
        say(f"{run_dir.name}: summary.json is unreadable (kept as summary.corrupt.json); "
            "resuming from the checkpoint to write it again")
    for name in clean_stale_temp(run_dir):
        say(f"{run_dir.name}: removed {name}, left by a writer that was killed")
    return "train"


def run_sweep(spec_path, results="results", only=None, shard=None, retry_failed=False,
              device="auto", progress=None, move_aside=False, loggers=(),
              peak_tflops=None, overrides=()) -> SweepReport:
    """Train every selected run of a spec (what `modexp run` calls). `progress`: a Progress UI;
    `loggers`: dashboards to feed besides the spec's train.loggers; `peak_tflops`: for MFU
    (None: a known GPU's peak or the cached CPU peak); `overrides`: `--set PATH=VALUE`s.

    Under torchrun every rank calls this; rank 0 decides (locks, skips), writes and reports.
    An environment failure (disk full, out of memory, device lost) leaves the run interrupted
    and stops the sweep with EnvironmentFailure (exit 2).
    """
    from modexp.training.train import setup_context, teardown_context

    from modexp.runs.loggers import check_loggers

    p = prepare(spec_path, results, only, shard, device=device, move_aside=move_aside,
                overrides=overrides)
    bad = check_loggers(p.spec.train.loggers, "train.loggers") + check_loggers(loggers, "--logger")
    if bad:
        raise SpecError(str(spec_path), bad)
    ctx = setup_context(p.device, peak_tflops)
    report = SweepReport(p.exp_dir)
    if ctx.is_main:
        if p.aside:
            report.moved_to = rundirs.move_aside(p.exp_dir, list(p.aside))
            _stderr(f"moved {len(p.aside)} run(s) with other settings to {report.moved_to}")
        write_plan_file(p.exp_dir, p.spec, p.plan, p.prints)
    ui = progress if progress is not None and ctx.is_main else _QuietProgress()
    ui.start_sweep(p.runs)
    try:
        with StopSignals() as stop:  # SIGTERM / SIGUSR1: checkpoint, then exit resumable
            _sweep(p, ctx, ui, report, retry_failed, loggers, stop)
    except EnvironmentFailure:
        ui.end_sweep()  # close the bars before the one-line error
        raise
    ui.end_sweep()
    teardown_context(ctx)  # on errors the process exits instead and torchrun reaps the group
    return report


def _sweep(p: Prepared, ctx, ui, report: SweepReport, retry_failed: bool, loggers=(),
           stop=lambda: None) -> None:
    for run in p.runs:
        run_dir = p.exp_dir / run.run_id
        if _agree(ctx, stop()) is not None:  # arrived between runs: start no other
            raise Stopped(str(p.exp_dir), [f"stopped by {_agree(ctx, stop())} before {run.run_id}; "
                                           "rerun the same command to go on"])
        with (run_lock(run_dir) if ctx.is_main else _held()) as got:
            decision = _agree(ctx, _decide(run_dir, retry_failed, _stderr) if got else "locked")
            if decision != "train":
                report.outcomes[run.run_id] = {"done": "skipped", "failed": "failed earlier"}.get(
                    decision, decision)
                ui.skip_run(run, decision)
                continue
            report.outcomes[run.run_id] = _train_locked(p, run, run_dir, ctx, ui, loggers, stop)


@contextmanager
def _held():
    yield True


def _train_locked(p: Prepared, run, run_dir, ctx, ui, loggers=(), stop=None) -> str:
    """Train one run under its lock; record the outcome in summary.json (rank 0)."""
    from modexp.training.train import Preempted

    trained = resolve_auto(p, run, ctx)
    if ctx.is_main and not (run_dir / RUN_FILE).exists():
        write_json_atomic(run_dir / RUN_FILE, RunRecord(
            plan={**run.to_dict(), "micro_batch_auto": trained.micro_batch_auto},
            spec=spec_to_dict(p.spec), data=p.data_print,
            fingerprint=p.prints[run.run_id]).to_dict())
    elif ctx.is_main and trained is not run:
        _record_auto(run_dir, run, trained)
    ui.start_run(run)
    try:
        summary = train_one(p.spec, trained, run_dir, p.data, ctx, on_step=ui.step, say=_stderr,
                            loggers=loggers, on_row=getattr(ui, "row", None), stop_signal=stop,
                            verbose=_verbose(ui))
    except KeyboardInterrupt:
        raise  # interrupted, not failed: the checkpoint continues it
    except Preempted as exc:  # every rank stops at the same step (Trainer._stop_requested)
        if ctx.is_main:
            record_interruption(run_dir, exc)
        raise Stopped(str(run_dir), [f"{exc}; the run is left interrupted: rerun the same "
                                     "command to resume it from that step"]) from None
    except Exception as exc:  # a run's failure must not stop the sweep
        if is_environment_error(exc):  # the machine failed, not the run: leave it resumable
            if ctx.is_main:
                record_interruption(run_dir, exc)
            raise EnvironmentFailure(str(run_dir), [
                f"{describe(exc)}; the run is left interrupted (resumable): fix the machine "
                "(free disk space, memory or the device) and rerun the same command"]) from exc
        if ctx.world > 1 and not _on_every_rank(exc):
            # this rank's own error, or a peer's crash seen as a lost connection: the others
            # wait in a collective, so end the job (torchrun stops every rank); the run is
            # left interrupted, to resume from its checkpoint
            raise
        if ctx.is_main:
            record_failure(run_dir, run.run_id, exc)
        ui.end_run(run, Summary.failed(run.run_id, describe(exc)).to_dict())
        return "failed"
    if ctx.is_main:
        write_json_atomic(run_dir / SUMMARY_FILE, summary)  # records.Summary's, run_id first
        clear_records(run_dir)
        retire(run_dir, p.spec.train.keep)  # the checkpoints train.keep does not keep
    ui.end_run(run, summary)
    return "done"


class EnvironmentFailure(SpecError):
    """The machine failed (disk, memory, device): exit 2, the run left resumable."""


class Stopped(EnvironmentFailure):
    """A stop signal ended the sweep (preemption, a time limit): exit 2, the run resumable."""


class _QuietProgress:
    """The progress interface, doing nothing (tests, non-main ranks)."""

    def start_sweep(self, runs): ...
    def start_run(self, run): ...
    def step(self, step, loss): ...
    def skip_run(self, run, why): ...
    def end_run(self, run, summary): ...
    def end_sweep(self): ...
