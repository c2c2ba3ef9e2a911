"""The `modexp` command line: each command parses its arguments and makes one library call."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.console import Console

from modexp.spec import SpecError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="isoFLOP experiments for Mixture-of-Depths transformers.")
# Piped output (logs, CI) gets wide tables rather than columns squeezed to 80 characters.
out = Console(width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 200)


@app.callback()
def main() -> None:
    """isoFLOP experiments for Mixture-of-Depths transformers: plan, run, status, plot."""


def _fail(e: SpecError) -> None:
    """Bad input: one bullet per problem on stderr, exit code 2, no traceback."""
    err.print(f"[red]error:[/] {len(e.problems)} problem(s) in {e.source}", highlight=False)
    for p in e.problems:
        err.print(f"  - {e.source}: {p}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


@app.command()
def plan(spec: Path = typer.Argument(..., help="Experiment spec (YAML)."),
         as_json: bool = typer.Option(False, "--json", help="Print the plan as JSON.")) -> None:
    """Budgets, FLOPs per step and FLOP-matched step counts of every run (no training)."""
    from modexp.plan import plan_file
    from modexp.tables import print_plan

    try:
        _, p = plan_file(spec)
    except SpecError as e:
        _fail(e)
    if as_json:
        sys.stdout.write(json.dumps([r.to_dict() for r in p.runs], indent=2) + "\n")
        for w in p.warnings:
            err.print(f"warning: {w}", highlight=False)
    else:
        print_plan(p, out)


@app.command()
def run(spec: Path = typer.Argument(..., help="Experiment spec (YAML)."),
        results: Path = typer.Option(Path("results"), help="Results root; runs go to RESULTS/<name>/."),
        only: list[str] = typer.Option(None, help="Run id or glob to train (repeatable)."),
        shard: str = typer.Option(None, help="i/n: train every n-th selected run, starting at i."),
        retry_failed: bool = typer.Option(False, help="Retry runs that failed, from their checkpoint."),
        device: str = typer.Option("auto", help="auto (cuda, then cpu), cpu, cuda."),
        plot_after: bool = typer.Option(False, "--plot", help="Run `modexp plot` at the end.")) -> None:
    """Train every run of the spec, FLOP-matched and resumable; finished runs are skipped.

    Under `torchrun --nproc_per_node N -m modexp run SPEC` each run trains with DDP over N
    processes (the same global batch); only rank 0 writes files and prints.
    """
    import os

    from modexp.progress import SweepProgress
    from modexp.runner import parse_shard, run_sweep

    main_rank = os.environ.get("RANK", "0") == "0"  # torchrun's global rank; unset: one process
    try:
        report = run_sweep(spec, results, only, parse_shard(shard), retry_failed, device,
                           progress=SweepProgress(out) if main_rank else None)
    except SpecError as e:
        if not main_rank:  # every rank fails alike; one copy of the message is enough
            raise typer.Exit(2)
        _fail(e)
    if not main_rank:
        raise typer.Exit(1 if report.failed else 0)
    out.print(f"results in {report.experiment_dir}; figures: modexp plot {report.experiment_dir}")
    if plot_after:
        plot(report.experiment_dir, "png")
    if report.failed:
        err.print(f"[red]{len(report.failed)} run(s) failed:[/] {', '.join(report.failed)} "
                  "(see error.log in each run folder)")
        raise typer.Exit(1)


@app.command()
def status(path: Path = typer.Argument(..., help="A spec (YAML) or its results folder."),
           results: Path = typer.Option(Path("results"), help="Results root, for a spec."),
           as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Each run's state (planned, running, interrupted, done, failed), progress and losses."""
    from modexp.status import print_status, sweep_status

    try:
        rows = sweep_status(path, results)
    except SpecError as e:
        _fail(e)
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
    else:
        print_status(rows, out)


@app.command()
def plot(path: Path = typer.Argument(..., help="A results folder (or the spec that wrote it)."),
         fmt: str = typer.Option("png", "--format", help="Comma-separated: png, svg, pdf."),
         results: Path = typer.Option(Path("results"), help="Results root, for a spec.")) -> None:
    """Loss vs training FLOPs, isoFLOP profiles, MoD routing figures and the summary table."""
    from modexp.plot import plot_results, print_report
    from modexp.status import experiment_dir

    formats = [f.strip() for f in fmt.split(",") if f.strip()]
    try:
        bad = [f for f in formats if f not in ("png", "svg", "pdf")]
        if bad:
            raise SpecError("--format", [f"--format: {', '.join(bad)} not allowed; allowed: png, svg, pdf"])
        report = plot_results(experiment_dir(path, results), formats)
    except SpecError as e:
        _fail(e)
    print_report(report, out)
