"""Dashboards next to metrics.jsonl: TensorBoard and W&B loggers, composed by the runner.

The Trainer only knows the Logger protocol (`log(row)`). Tee sends each row to metrics.jsonl
first (the source of truth: its errors propagate) and then to each dashboard; a dashboard that
raises is reported once on stderr and dropped, so it never fails a run.

TensorBoard writes its event file from a thread of its own, which on an error (a read-only
folder, a full disk) prints its traceback and ends; the writer raises the same error at its
next call from the training thread. So such threads print nothing here (`_quiet_writer_threads`)
and their error reaches the Tee from that next call, or from close: one warning, no traceback.
"""

from __future__ import annotations

import json
import math
import re
import sys
import threading
import weakref

LOGGERS = ("tensorboard", "wandb")
_EXTRA = {"tensorboard": "tensorboard", "wandb": "wandb"}


def check_loggers(names, where: str = "--logger") -> list[str]:
    """One problem per unknown logger or one whose package is missing (checked before runs),
    labelled with where the names came from: `--logger` or the spec's `train.loggers`."""
    import importlib.util

    problems = []
    for n in names:
        if n not in LOGGERS:
            problems.append(f"{where}: {n!r} not allowed; allowed: {', '.join(LOGGERS)}")
        elif importlib.util.find_spec(n) is None:
            problems.append(f"{where}: {n} needs the `{_EXTRA[n]}` extra "
                            f"(pip install 'modexp[{_EXTRA[n]}]')")
    return problems


def scalars(row: dict) -> dict[str, float]:
    """A metrics row as flat scalars: 'train/lm_loss', 'eval/routed_frac_causal/L1', ..."""
    kind, out = row.get("kind", "train"), {}
    for k, v in row.items():
        if k in ("kind", "step") or isinstance(v, bool):
            continue
        if isinstance(v, (int, float)) and v is not None and math.isfinite(v):
            out[f"{kind}/{k}"] = float(v)
        elif isinstance(v, list):
            out.update({f"{kind}/{k}/{i}": float(x) for i, x in enumerate(v)
                        if isinstance(x, (int, float)) and math.isfinite(x)})
    return out


_THREAD_ERRORS: "weakref.WeakKeyDictionary[threading.Thread, BaseException]" = weakref.WeakKeyDictionary()


def _is_writer_thread(thread) -> bool:
    """TensorBoard's event-writer thread (tensorboard.summary.writer's _AsyncWriterThread)."""
    return type(thread).__module__.startswith("tensorboard.")


def _quiet_writer_threads() -> None:
    """Keep the errors of TensorBoard's writer threads (for TensorBoardLogger to raise) instead
    of printing their tracebacks; every other thread keeps the hook it had. Installed once."""
    previous = threading.excepthook
    if getattr(previous, "modexp_quiet", False):
        return

    def hook(args):
        if args.thread is not None and _is_writer_thread(args.thread):
            _THREAD_ERRORS[args.thread] = args.exc_value
            return
        previous(args)

    hook.modexp_quiet = True
    threading.excepthook = hook


class TensorBoardLogger:
    """Event files under RUN_DIR/tensorboard; the spec and plan entry as text; on resume,
    events after the checkpoint's step are purged (they are logged again). An error of the
    writer's own thread is raised by the next log or close (the Tee warns once)."""

    def __init__(self, run_dir, run_id: str, spec: dict, plan: dict, step: int):
        from torch.utils.tensorboard import SummaryWriter

        _quiet_writer_threads()
        before = set(threading.enumerate())
        self.w = SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=step or None)
        self.threads = [t for t in threading.enumerate() if t not in before and _is_writer_thread(t)]
        if not step:
            self.w.add_text("spec", _code(spec), 0)
            self.w.add_text("plan", _code(plan), 0)

    def _raise_thread_error(self) -> None:
        for t in self.threads:
            if t in _THREAD_ERRORS:
                raise _THREAD_ERRORS.pop(t)

    def log(self, row: dict) -> None:
        self._raise_thread_error()
        for k, v in scalars(row).items():
            self.w.add_scalar(k, v, row["step"])

    def close(self) -> None:
        self.w.close()
        self._raise_thread_error()


class WandbLogger:
    """A W&B run with the run's id (resumed on restart); WANDB_MODE=offline works without a login."""

    def __init__(self, run_dir, run_id: str, spec: dict, plan: dict, step: int):
        import wandb

        self.run = wandb.init(project=f"modexp-{spec['name']}", name=run_id, dir=str(run_dir),
                              id=re.sub(r"[^A-Za-z0-9_-]", "-", f"{spec['name']}-{run_id}"),
                              resume="allow", config={"spec": spec, "plan": plan}, reinit=True)

    def log(self, row: dict) -> None:
        self.run.log(scalars(row), step=row["step"])

    def close(self) -> None:
        self.run.finish()


def _code(d: dict) -> str:
    return "```\n" + json.dumps(d, indent=2) + "\n```"  # markdown code block in TB's text tab


class Tee:
    """metrics.jsonl plus dashboards; dashboard failures warn once and drop that dashboard."""

    def __init__(self, primary, names, run_dir, run_id: str, spec: dict, plan: dict):
        self.primary, self.dashboards = primary, {}
        self.names, self.args = list(dict.fromkeys(names)), (run_dir, run_id, spec, plan)

    def _open(self, step: int) -> None:
        """Open the dashboards at the step training resumes from (0: a fresh run)."""
        for n in self.names:
            cls = {"tensorboard": TensorBoardLogger, "wandb": WandbLogger}[n]
            self._guard(n, lambda n=n, cls=cls: self.dashboards.__setitem__(n, cls(*self.args, step)))

    def _guard(self, name: str, fn) -> None:
        try:
            fn()
        except Exception as e:  # a dashboard must never fail a run
            self.dashboards.pop(name, None)
            print(f"warning: {name} logger failed ({type(e).__name__}: {e}); it is off for this "
                  "run, metrics.jsonl is complete", file=sys.stderr)

    def log(self, row: dict) -> None:
        """Append to metrics.jsonl, then send to each live dashboard."""
        self.primary.log(row)
        for n, d in list(self.dashboards.items()):
            self._guard(n, lambda d=d: d.log(row))

    def last_step(self) -> int:
        """The last step metrics.jsonl holds (the record; dashboards only mirror it)."""
        return self.primary.last_step()

    def truncate_after(self, step: int) -> None:
        """metrics.jsonl's resume truncation; the dashboards open here, purging later steps."""
        self.primary.truncate_after(step)
        self._open(step)

    def close(self) -> None:
        """Flush and close every dashboard."""
        for n, d in list(self.dashboards.items()):
            self._guard(n, d.close)
