"""Progress for a sweep on stderr: rich bars on a terminal, plain status lines in a batch log.

On a terminal: an overall bar in FLOPs and one bar per run (step, LM loss, tok/s, ETA).
Otherwise (a Slurm log, CI): one plain line per running run every `every` seconds. verbosity -1
(quiet): only failures; 1 (verbose): also each run's plan as it starts.

The loss shown is the LM's cross-entropy (`lm_loss` of the logged row), labelled "lm loss":
the loss MoD backpropagates adds its router or predictor BCE, which no figure compares.
Every line is printed as text, never as Rich markup (an error message may hold brackets);
colour comes from styles modexp adds.
"""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.text import Text

from modexp.records import FAILED, Row, Summary, TrainRow, as_row


class SweepProgress:
    """Implements the runner's progress interface; prints one line per run end."""

    def __init__(self, console: Console, verbosity: int = 0, every: float = 60.0):
        self.console, self.verbosity, self.every = console, verbosity, every
        self.live = console.is_terminal and verbosity >= 0
        self.bars = Progress(TextColumn("{task.description}", markup=False), BarColumn(),
                             MofNCompleteColumn(), TextColumn("{task.fields[info]}", markup=False),
                             TimeRemainingColumn(), console=console, transient=False,
                             disable=not self.live)
        self.overall = self.current = None
        self.run = None
        self.done_flops = 0.0
        self.lm_loss: tuple[int, float] | None = None  # (step, LM loss) of the last train row

    def _say(self, text: str | Text, level: int = 0, style: str | None = None) -> None:
        if self.verbosity >= level:
            line = text if isinstance(text, Text) else Text(text, style=style or "")
            self.console.print(line, highlight=False, soft_wrap=True)

    def row(self, row: Row | dict) -> None:
        """A logged metrics row (runner.py passes each on): keeps the train rows' LM loss."""
        row = as_row(row)
        if isinstance(row, TrainRow) and isinstance(row.lm_loss, (int, float)):
            self.lm_loss = (row.step, float(row.lm_loss))

    def start_sweep(self, runs) -> None:
        """Open the overall bar, counted in percent of the sweep's training FLOPs."""
        self.bars.start()
        self.total = sum(r.total_flops for r in runs) or 1.0
        self.overall = self.bars.add_task("sweep (% of FLOPs)", total=100, info="")

    def start_run(self, run) -> None:
        """Open a bar for one run, counted in steps."""
        self.run, self.t0, self.first, self.last_line = run, time.time(), None, time.time()
        self.current = self.bars.add_task(run.run_id, total=run.steps, info="")
        self._say(f"start {run.run_id}: {run.params:,} params, {run.steps:,} steps of "
                  f"{run.batch_size}x{run.seq_len} tokens, {run.total_flops:.3g} FLOPs", level=1)

    def step(self, step: int, loss: float | None) -> None:
        """Advance the bars; refresh the LM loss and tokens/s when a logged loss arrives
        (`loss`, the backpropagated one, shows only where no row gave the LM's)."""
        if self.first is None:
            self.first, self.t0 = step - 1, time.time()
        self.bars.update(self.current, completed=step)
        self.bars.advance(self.overall, 100 * self.run.flops_per_step / self.total)
        self.done_flops += self.run.flops_per_step
        if loss is None:
            return
        now = time.time()
        shown = (f"lm loss {self.lm_loss[1]:.3f}" if self.lm_loss and self.lm_loss[0] == step
                 else f"loss {loss:.3f}")
        tok_s = (step - self.first) * self.run.batch_size * self.run.seq_len / max(now - self.t0, 1e-9)
        self.bars.update(self.current, info=f"{shown}  {tok_s:,.0f} tok/s")
        if not self.live and now - self.last_line >= self.every:
            self.last_line = now
            eta = (self.run.steps - step) * (now - self.t0) / max(step - self.first, 1)
            self._say(f"{self.run.run_id} step {step}/{self.run.steps} "
                      f"({100 * self.done_flops / self.total:.1f}% of sweep FLOPs) {shown} "
                      f"{tok_s:,.0f} tok/s ETA {_hms(eta)}")

    def skip_run(self, run, why: str) -> None:
        """Say why a run is not trained (done, failed earlier, locked by another process)."""
        self.bars.advance(self.overall, 100 * run.total_flops / self.total)
        self.done_flops += run.total_flops
        reason = {"done": "already done", "failed": "failed earlier (--retry-failed to retry)",
                  "locked": "locked by another process"}[why]
        self._say(f"skip {run.run_id}: {reason}", style="dim")

    def end_run(self, run, summary: dict) -> None:
        """One line with the run's outcome (failures even when quiet); `summary` as
        summary.json holds it (records.Summary)."""
        if self.current is not None:
            self.bars.remove_task(self.current)
        s = Summary.from_dict(summary, f"{run.run_id} summary")
        if s.state == FAILED:
            self._say(Text("failed", style="red") + Text(f" {run.run_id}: {s.error}"), level=-1)
            return
        causal = s.final_eval_loss_causal
        extra = f", causal {causal:.4f}" if causal is not None else ""
        self._say(Text("done", style="green") + Text(
            f" {run.run_id}: eval loss {s.final_eval_loss:.4f}{extra}, "
            f"{s.tokens_per_s:,.0f} tok/s, {s.wall_time:.0f} s"))

    def end_sweep(self) -> None:
        """Close the bars (the overall one at exactly 100%, whatever the float rounding)."""
        self.bars.update(self.overall, completed=100)
        self.bars.stop()


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f}" if n >= 1e6 else f"{n / 1e6:.3f}"


def _hms(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def sweep_json(report) -> dict:
    """`modexp run --json`: the results folder, each selected run's outcome and summary.json."""
    from modexp.runs.metrics import SUMMARY_FILE, read_summary

    runs = {}
    for run_id, outcome in report.outcomes.items():
        f = report.experiment_dir / run_id / SUMMARY_FILE
        runs[run_id] = {"outcome": outcome, "summary": read_summary(f).to_dict() if f.exists() else None}
    return {"experiment_dir": str(report.experiment_dir), "failed": report.failed, "runs": runs}


class PrepareProgress:
    """`modexp prepare`'s progress (modexp/data/prepare.py calls phase, advance, done): one rich
    bar per pass on a terminal, in MB of input encoded (or read, while training BPE), so the
    ETA is the encoder's pace; else (a batch log) one plain line per pass and every `every`
    seconds. A pass with no total (learning BPE merges) shows no estimate."""

    def __init__(self, console: Console, every: float = 10.0):
        self.console, self.every = console, every
        self.live = console.is_terminal
        self.bars = Progress(TextColumn("{task.description}", markup=False), BarColumn(),
                             TextColumn("{task.fields[mb]}", markup=False), TimeRemainingColumn(),
                             console=console, transient=True, disable=not self.live)
        self.task = None

    def phase(self, name: str, total: int | None) -> None:
        """Start a pass over `total` bytes of input (None: unknown)."""
        if self.task is None:
            self.bars.start()
        else:
            self.bars.remove_task(self.task)
        self.name, self.total, self.done_bytes = name, total, 0
        self.t0 = self.last = time.time()
        self.task = self.bars.add_task(name, total=None if total is None else max(total / 1e6, 1e-6),
                                       mb=self._mb())
        self._line()

    def advance(self, n: int) -> None:
        """n more bytes of input through this pass."""
        self.done_bytes += n
        self.bars.update(self.task, advance=n / 1e6, mb=self._mb())
        if not self.live and time.time() - self.last >= self.every:
            self._line()

    def _mb(self) -> str:
        if self.total is None:
            return "(no estimate)"
        return f"{_mb(self.done_bytes)}/{_mb(self.total)} MB"

    def _line(self) -> None:
        if self.live:
            return
        now = self.last = time.time()
        rate = self.done_bytes / 1e6 / max(now - self.t0, 1e-9)
        text = f"prepare: {self.name} {self._mb()}"
        if self.total and self.done_bytes:
            eta = (self.total - self.done_bytes) / 1e6 / max(rate, 1e-9)
            text += f" ({100 * self.done_bytes / self.total:.0f}%), {rate:,.2f} MB/s, ETA {_hms(eta)}"
        self.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def done(self) -> None:
        """Close the bars."""
        self.bars.stop()
