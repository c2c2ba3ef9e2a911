"""Rich progress for a sweep: an overall bar in FLOPs and one bar per run (step, loss, tok/s, ETA)."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


class SweepProgress:
    """Implements the runner's progress interface with rich bars; prints one line per run end."""

    def __init__(self, console: Console):
        self.console = console
        self.bars = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                             TextColumn("{task.fields[info]}"), TimeRemainingColumn(),
                             console=console, transient=False)
        self.overall = self.current = None
        self.run = None

    def start_sweep(self, runs) -> None:
        """Open the overall bar, counted in percent of the sweep's training FLOPs."""
        self.bars.start()
        self.total = sum(r.total_flops for r in runs)
        self.overall = self.bars.add_task("sweep (% of FLOPs)", total=100, info="")

    def start_run(self, run) -> None:
        """Open a bar for one run, counted in steps."""
        self.run, self.t0, self.first = run, time.time(), None
        self.current = self.bars.add_task(run.run_id, total=run.steps, info="")

    def step(self, step: int, loss: float | None) -> None:
        """Advance the bars; refresh loss and tokens/s when a logged loss arrives."""
        if self.first is None:
            self.first, self.t0 = step - 1, time.time()
        self.bars.update(self.current, completed=step)
        self.bars.advance(self.overall, 100 * self.run.flops_per_step / self.total)
        if loss is not None:
            tok_s = (step - self.first) * self.run.batch_size * self.run.seq_len / max(time.time() - self.t0, 1e-9)
            self.bars.update(self.current, info=f"loss {loss:.3f}  {tok_s:,.0f} tok/s")

    def skip_run(self, run, why: str) -> None:
        """Say why a run is not trained (done, failed earlier, locked by another process)."""
        self.bars.advance(self.overall, 100 * run.total_flops / self.total)
        reason = {"done": "already done", "failed": "failed earlier (--retry-failed to retry)",
                  "locked": "locked by another process"}[why]
        self.console.print(f"[dim]skip {run.run_id}: {reason}[/]")

    def end_run(self, run, summary: dict) -> None:
        """One line with the run's outcome."""
        if self.current is not None:
            self.bars.remove_task(self.current)
        if summary["state"] == "failed":
            self.console.print(f"[red]failed[/] {run.run_id}: {summary['error']}")
            return
        causal = summary.get("final_eval_loss_causal")
        extra = f", causal {causal:.4f}" if causal is not None else ""
        self.console.print(f"[green]done[/] {run.run_id}: eval loss {summary['final_eval_loss']:.4f}"
                           f"{extra}, {summary['tokens_per_s']:,.0f} tok/s, {summary['wall_time']:.0f} s")

    def end_sweep(self) -> None:
        """Close the bars (the overall one at exactly 100%, whatever the float rounding)."""
        self.bars.update(self.overall, completed=100)
        self.bars.stop()


class PrepareProgress:
    """`modexp prepare`'s progress: one rich bar per pass, in MB of input read."""

    def __init__(self, console: Console):
        self.console = console
        self.bars = Progress(TextColumn("{task.description}"), BarColumn(),
                             TextColumn("{task.completed:,.0f}/{task.total:,.0f} MB"),
                             TimeRemainingColumn(), console=console, transient=True,
                             disable=not console.is_terminal)
        self.task = None

    def phase(self, name: str, total: int) -> None:
        """Start a pass over `total` bytes of input."""
        if self.task is None:
            self.bars.start()
        else:
            self.bars.remove_task(self.task)
        self.task = self.bars.add_task(name, total=max(total / 1e6, 1e-6))

    def advance(self, n: int) -> None:
        """n more bytes of input read."""
        self.bars.advance(self.task, n / 1e6)

    def done(self) -> None:
        """Close the bars."""
        self.bars.stop()
