"""Dashboards next to metrics.jsonl: TensorBoard and W&B loggers, composed by the runner.

The Trainer only knows the Logger protocol (`log(row)`). Tee sends each row to metrics.jsonl
first (the source of truth: its errors propagate) and then to each dashboard; a dashboard that
raises is reported once on stderr and dropped, so it never fails a run.

Both dashboards plot against training FLOPs, never optimizer steps: runs of different sizes
take different step counts for the same compute, so a step axis overlays unequal budgets (the
comparison an isoFLOP study exists to avoid; Hoffmann et al. 2022, sec. 3). W&B gets a step
metric, `train/flops`, that every other series is plotted against (`define_metric`). A
TensorBoard step must be an int64, so its step is the FLOPs count in a unit of 1000**k chosen
per experiment from its largest budget (`flops_unit`): every run of an experiment has the same
unit, so their curves overlay, and the unit is written in each run's `flops_unit` text.
Tags are `<kind>/<metric>` without a doubled prefix (`eval/loss`, `eval/loss_causal`,
`train/loss`, `train/lm_loss`, per-layer lists as `eval/routed_frac_causal/0`, ...); the run's
variant, size, family, budget, seed and shape are hyperparameters (TensorBoard's HParams tab,
W&B's config) so runs can be grouped by them.

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

from modexp.records import KIND_KEY, ROW, SCHEMA_KEY, Row, TrainRow

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


def _row_dict(row: Row | dict) -> dict:
    """A row as metrics.jsonl holds it (a record's to_dict; a dict as given)."""
    return row if isinstance(row, dict) else row.to_dict()


def scalars(row: Row | dict) -> dict[str, float]:
    """A metrics row (a record, or its dict) as flat scalars: train/lm_loss, eval/loss,
    eval/loss_causal, eval/routed_frac_causal/0 (one per routed layer, in layer order), ...; a
    key that repeats its kind (eval_loss, train_loss) loses the repetition (eval/loss,
    train/loss). The schema version is no metric."""
    row = _row_dict(row)
    kind, out = row.get(KIND_KEY, TrainRow.kind), {}
    for k, v in row.items():
        if k in (KIND_KEY, SCHEMA_KEY) or isinstance(v, bool):
            continue
        k = k.removeprefix(f"{kind}_")
        if isinstance(v, (int, float)) and v is not None and math.isfinite(v):
            out[f"{kind}/{k}"] = float(v)
        elif isinstance(v, list):
            out.update({f"{kind}/{k}/{i}": float(x) for i, x in enumerate(v)
                        if isinstance(x, (int, float)) and math.isfinite(x)})
    return out


# The TensorBoard step of a FLOPs count: FLOPs // unit, with the unit 1000**k the smallest for
# which the experiment's largest budget stays under this many steps (int64 holds ~9.2e18; the
# TensorBoard front end reads steps as doubles, exact to 2**53, and keeps this many distinct).
MAX_TB_STEP = 10**9
UNIT_NAMES = {1: "FLOPs", 10**3: "kFLOPs", 10**6: "MFLOPs", 10**9: "GFLOPs", 10**12: "TFLOPs",
              10**15: "PFLOPs", 10**18: "EFLOPs"}


def flops_unit(budgets) -> int:
    """The FLOPs per TensorBoard step for an experiment with these budgets: 1000**k, the
    smallest that keeps max(budgets) / unit <= MAX_TB_STEP (1 for budgets up to 1e9)."""
    top, unit = max((float(b) for b in budgets), default=1.0), 1
    while top / unit > MAX_TB_STEP:
        unit *= 1000
    return unit


def unit_name(unit: int) -> str:
    """'kFLOPs' for 1000, '1e+21 FLOPs' past the named units."""
    return UNIT_NAMES.get(unit, f"{unit:.0e} FLOPs")


def hparams(spec: dict, plan: dict) -> dict[str, str | int | float | bool]:
    """The run's settings a dashboard groups runs by: variant, size, family, budget, seed,
    shape, steps, learning rate, routing (scalars only; None as 'none')."""
    model = next((m for m in spec.get("models", []) if m.get("name") == plan.get("model")), {})
    caps = [c for c in plan.get("capacities") or [] if c is not None]
    raw = {"experiment": plan.get("experiment"), "run_id": plan.get("run_id"),
           "variant": plan.get("variant"), "kind": plan.get("kind"), "size": plan.get("model"),
           "family": plan.get("family"), "n_layers": plan.get("n_layers", model.get("n_layers")),
           "d_model": model.get("d_model"), "n_heads": model.get("n_heads"),
           "budget": plan.get("budget"), "seed": plan.get("seed"), "params": plan.get("params"),
           "params_non_embedding": plan.get("params_non_embedding"), "seq_len": plan.get("seq_len"),
           "batch_size": plan.get("batch_size"), "steps": plan.get("steps"), "lr": plan.get("lr"),
           "router": plan.get("router"), "capacity": sum(caps) / len(caps) if caps else None,
           "routed_layers": len(caps)}
    return {k: ("none" if v is None else v if isinstance(v, (str, int, float, bool)) else str(v))
            for k, v in raw.items()}


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
    """Event files under RUN_DIR/tensorboard, stepped by FLOPs // flops_unit (the module
    docstring); the spec, plan entry and FLOPs unit as text and the run's hparams at the first
    start; on resume, events after the checkpoint's are purged (they are logged again). An error
    of the writer's own thread is raised by the next log or close (the Tee warns once)."""

    def __init__(self, run_dir, run_id: str, spec: dict, plan: dict, step: int, verbose=False):
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams as hparams_summaries

        _quiet_writer_threads()
        self.unit = flops_unit(spec.get("budgets") or [plan.get("budget", 1.0)])
        # the checkpoint's own row is kept (metrics.jsonl keeps it too): purge from the next step
        purge = self.tb_step(step * plan["flops_per_step"]) + 1 if step else None
        before = set(threading.enumerate())
        self.w = SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=purge)
        self.threads = [t for t in threading.enumerate() if t not in before and _is_writer_thread(t)]
        if not step:
            self.w.add_text("spec", _code(spec), 0)
            self.w.add_text("plan", _code(plan), 0)
            self.w.add_text("flops_unit", f"The step axis is training FLOPs in {unit_name(self.unit)}"
                            f": step = FLOPs // {self.unit} (the same unit for every run of "
                            f"experiment {spec.get('name')!r}, chosen from its largest budget).", 0)
            writer = self.w._get_file_writer()
            for summary in hparams_summaries(hparams(spec, plan), {t: None for t in HPARAM_METRICS}):
                writer.add_summary(summary)

    def tb_step(self, flops) -> int:
        """The TensorBoard step of a FLOPs count (an int64)."""
        return int(flops) // self.unit

    def _raise_thread_error(self) -> None:
        for t in self.threads:
            if t in _THREAD_ERRORS:
                raise _THREAD_ERRORS.pop(t)

    def log(self, row: Row | dict) -> None:
        self._raise_thread_error()
        step = self.tb_step(_row_dict(row)[ROW.flops])
        for k, v in scalars(row).items():
            self.w.add_scalar(k, v, step)

    def close(self) -> None:
        self.w.close()
        self._raise_thread_error()


class WandbLogger:
    """A W&B run with the run's id (resumed on restart), one per modexp run (reinit
    "create_new"; finished at close); WANDB_MODE=offline works without a login. Every series is
    plotted against the step metric `train/flops`, which eval rows carry too; the run's hparams
    are top-level config keys (spec and plan entry beside them). Silent unless `verbose`."""

    def __init__(self, run_dir, run_id: str, spec: dict, plan: dict, step: int, verbose=False):
        import wandb

        quiet = {} if verbose else {"quiet": True, "silent": True, "show_info": False,
                                    "show_warnings": False}
        self.run = wandb.init(project=f"modexp-{spec['name']}", name=run_id, dir=str(run_dir),
                              id=re.sub(r"[^A-Za-z0-9_-]", "-", f"{spec['name']}-{run_id}"),
                              resume="allow", reinit="create_new",
                              config={**hparams(spec, plan), "spec": spec, "plan": plan},
                              settings=wandb.Settings(**quiet))
        self.run.define_metric(FLOPS_METRIC)
        for kind in ("train", "eval"):
            self.run.define_metric(f"{kind}/*", step_metric=FLOPS_METRIC)

    def log(self, row: Row | dict) -> None:
        row = _row_dict(row)
        self.run.log({**scalars(row), FLOPS_METRIC: float(row[ROW.flops])}, step=row[ROW.step])

    def close(self) -> None:
        self.run.finish()


FLOPS_METRIC = "train/flops"  # W&B's x-axis for every series
HPARAM_METRICS = ("eval/loss", "eval/loss_causal")  # TensorBoard's HParams tab shows these


def _code(d: dict) -> str:
    return "```\n" + json.dumps(d, indent=2) + "\n```"  # markdown code block in TB's text tab


class Tee:
    """metrics.jsonl plus dashboards; dashboard failures warn once and drop that dashboard."""

    def __init__(self, primary, names, run_dir, run_id: str, spec: dict, plan: dict,
                 verbose: bool = False):
        """`verbose`: let the dashboards' libraries print their own messages (W&B's, `-v`)."""
        self.primary, self.dashboards, self.verbose = primary, {}, verbose
        self.names, self.args = list(dict.fromkeys(names)), (run_dir, run_id, spec, plan)

    def _open(self, step: int) -> None:
        """Open the dashboards at the step training resumes from (0: a fresh run)."""
        for n in self.names:
            cls = {"tensorboard": TensorBoardLogger, "wandb": WandbLogger}[n]
            self._guard(n, lambda n=n, cls=cls: self.dashboards.__setitem__(
                n, cls(*self.args, step, self.verbose)))

    def _guard(self, name: str, fn) -> None:
        try:
            fn()
        except Exception as e:  # a dashboard must never fail a run
            self.dashboards.pop(name, None)
            print(f"warning: {name} logger failed ({type(e).__name__}: {e}); it is off for this "
                  "run, metrics.jsonl is complete", file=sys.stderr)

    def log(self, row: Row | dict) -> None:
        """Append to metrics.jsonl, then send to each live dashboard (the row as the file
        holds it)."""
        self.primary.log(row)
        row = _row_dict(row)
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
