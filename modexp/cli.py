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
    """isoFLOP experiments for Mixture-of-Depths transformers: plan, run, status, plot, sample, bench."""


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
        peak_tflops: float = typer.Option(None, min=0.0, help="Device peak TFLOP/s for MFU (default: "
                                          "a known GPU's bf16 peak, or the CPU peak `modexp bench` cached)."),
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
                           progress=SweepProgress(out) if main_rank else None,
                           peak_tflops=peak_tflops)
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


@app.command()
def sample(run_dir: Path = typer.Argument(..., help="A run folder: results/<experiment>/<run_id>."),
           prompt: str = typer.Option(..., help="Text to continue (token ids for a .bin corpus)."),
           max_new_tokens: int = typer.Option(200, help="Tokens to generate."),
           temperature: float = typer.Option(0.8, help="Sampling temperature; 0 = greedy."),
           top_k: int = typer.Option(None, help="Sample from the k most likely tokens only."),
           seed: int = typer.Option(0, help="Sampling seed."),
           device: str = typer.Option("auto", help="auto (cuda, then cpu), cpu, cuda.")) -> None:
    """Continue a prompt with a run's checkpoint (KV cache; MoD routes causally) and show routing."""
    from modexp.sample import print_sample, sample_run

    try:
        res = sample_run(run_dir, prompt, max_new_tokens, temperature, top_k, seed, device)
    except SpecError as e:
        _fail(e)
    print_sample(res, out)


@app.command()
def bench(target: Path = typer.Argument(..., help="A run folder, a results folder or a spec."),
          model: str = typer.Option(None, help="Model size name (default: the largest)."),
          batch_size: list[int] = typer.Option([1, 8], help="Decode batch size (repeatable)."),
          prompt_len: int = typer.Option(16, help="Prompt tokens per row."),
          new_tokens: int = typer.Option(128, help="Tokens decoded per row."),
          repeats: int = typer.Option(15, help="Timed decode repeats (median reported)."),
          train_repeats: int = typer.Option(10, help="Timed training steps (median reported)."),
          train: bool = typer.Option(True, "--train/--no-train", help="Also time a training step."),
          device: str = typer.Option("auto", help="auto (cuda, then cpu), cpu, cuda."),
          as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """MoD vs vanilla of one size: decode tok/s, train step time, memory, vs the FLOP ratios."""
    from modexp.bench import bench as run_bench
    from modexp.bench import print_bench, report_dict

    try:
        report = run_bench(target, model, tuple(batch_size), prompt_len, new_tokens,
                           repeats=repeats, train=train, train_repeats=train_repeats,
                           device=device)
    except SpecError as e:
        _fail(e)
    if as_json:
        sys.stdout.write(json.dumps(report_dict(report), indent=2) + "\n")
    else:
        print_bench(report, out)
