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
