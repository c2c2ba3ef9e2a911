"""The `modexp` command line: each command parses its arguments and makes one library call.

Every message is printed as text, never as Rich markup (paths, spec values and library
messages may hold brackets, as in `pip install 'modexp[data]'`); colour comes only from styles
modexp adds. Bad input, from a spec, a flag or a usage error Typer finds (an unknown option,
a bad number, a missing argument), is one line per problem on stderr and exit code 2.
"""

from __future__ import annotations

import functools
import json
import sys
import traceback
from contextlib import contextmanager
from pathlib import Path

import typer
import typer.core
from rich.console import Console
from rich.text import Text

from modexp.records import RecordError
from modexp.spec import SpecError

_click = getattr(typer.core, "_click", None)  # typer >= 0.20 vendors click; before, click itself
if _click is None:
    import click as _click


@contextmanager
def _usage_errors():
    """A usage error in modexp's one-line style, exit 2; help on no arguments stays help."""
    try:
        yield
    except getattr(_click.exceptions, "NoArgsIsHelpError", ()):
        raise
    except _click.exceptions.UsageError as e:
        _print_problems(_usage_problem(e))
        raise typer.Exit(2) from None


class _Commands(typer.core.TyperGroup):
    """modexp's command group: Typer's, with usage errors printed as modexp prints bad input
    (one line naming the flag or argument, exit 2) instead of Rich's boxed panel."""

    def make_context(self, *args, **kwargs):
        with _usage_errors():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx):
        with _usage_errors():
            return super().invoke(ctx)


def _usage_problem(e) -> SpecError:
    """A click UsageError as SpecError(the command, one line naming the flag or argument)."""
    cmd = e.ctx.command_path if e.ctx is not None else "modexp"
    see = f"`{cmd} --help` lists what is allowed"
    param = getattr(e, "param", None)
    if isinstance(e, _click.exceptions.NoSuchOption):
        close = f" (did you mean {', '.join(sorted(e.possibilities))}?)" if e.possibilities else ""
        return SpecError(cmd, [f"{e.option_name}: no such option{close}; {see}"])
    if param is not None:
        name = param.opts[0] if param.param_type_name == "option" else str(param.name).upper()
        if isinstance(e, _click.exceptions.MissingParameter):
            args = [str(p.name).upper() for p in e.ctx.command.params
                    if p.param_type_name == "argument"] if e.ctx is not None else []
            return SpecError(cmd, [f"{name}: missing (usage: {cmd} [OPTIONS] {' '.join(args)}); {see}"])
        return SpecError(cmd, [f"{name}: {e.message.rstrip('.')}; {see}"])
    return SpecError(cmd, [f"{e.format_message().rstrip('.')}; {see}"])


app = typer.Typer(no_args_is_help=True, cls=_Commands,
                  help="isoFLOP experiments for Mixture-of-Depths transformers.")
# Piped output (logs, CI) gets wide tables rather than columns squeezed to 80 characters.
# markup=False: what a printer passes as a string is printed as it is.
out = Console(width=None if sys.stdout.isatty() else 200, markup=False)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 200, markup=False)


_SHOW_TRACEBACK = {"on": False}


def _version(value: bool) -> None:
    if value:
        from modexp import __version__

        out.print(f"modexp {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def main(verbose: bool = typer.Option(False, "--verbose", "-v",
                                      help="On an error, also show the Python traceback."),
         version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                      help="Print the version and exit.")) -> None:
    """isoFLOP experiments for Mixture-of-Depths transformers: plan, run, status, plot, sample, bench."""
    _SHOW_TRACEBACK["on"] = verbose


def _errors(command):
    """One line and exit 2 for bad input or a broken environment, whatever raises it: SpecError
    (files, fields, flags), OSError (permissions, disk full, a file where a folder goes) or a
    garbled JSON results file or one of another layout (records.RecordError).
    A bug still shows its traceback; -v shows it for these too."""

    @functools.wraps(command)
    def wrapped(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except SpecError as e:
            _fail(e)
        except OSError as e:
            where = e.filename or "modexp"
            _fail(SpecError(str(where), [f"{e.strerror or e} (errno {e.errno})"]))
        except json.JSONDecodeError as e:  # a garbled results file (metrics.read_json names it)
            where, _, what = e.msg.partition(": ")
            _fail(SpecError(where, [f"{what or e.msg}; it was damaged after it was written"]))
        except RecordError as e:  # a run file of another layout (records.py names file and field)
            where, _, what = str(e).partition(": ")
            _fail(SpecError(where, [what or str(e)]))

    return wrapped


def _warn(warnings: list[str]) -> None:
    """Warnings go to stderr, so stdout stays the command's result."""
    for w in dict.fromkeys(warnings):  # once each, in order
        err.print(Text("warning:", style="yellow") + Text(f" {w}"), highlight=False, soft_wrap=True)


DEVICE_HELP = "auto (cuda, then cpu), cpu, cuda or cuda:N."
SET_HELP = ("PATH=VALUE: set a spec field before it is validated, e.g. train.lr=1e-3, "
            "models[1].d_model=64 or models.1.d_model (value: YAML; repeatable).")


def _print_problems(e: SpecError) -> None:
    """One bullet per problem on stderr, printed as text."""
    err.print(Text("error:", style="red") + Text(f" {len(e.problems)} problem(s) in {e.source}"),
              highlight=False, soft_wrap=True)
    for p in e.problems:
        # no "--shard: --shard:" and no "--set: --set x=1: ..."
        where = "" if p.startswith((f"{e.source}:", f"{e.source} ")) else f"{e.source}: "
        err.print(Text(f"  - {where}{p}"), highlight=False, soft_wrap=True)


def _fail(e: SpecError) -> None:
    """Bad input: one bullet per problem on stderr, exit code 2, no traceback (unless -v)."""
    if _SHOW_TRACEBACK["on"] and sys.exc_info()[0] is not None:
        traceback.print_exc()
    _print_problems(e)
    raise typer.Exit(2)


@app.command()
@_errors
def plan(spec: Path = typer.Argument(..., help="Experiment spec (YAML)."),
         as_json: bool = typer.Option(False, "--json", help="Print the plan as JSON (with each "
                                      "run's memory estimate)."),
         suggest_grid: bool = typer.Option(False, "--suggest-grid", help="Print, as YAML to paste, "
                                           "sizes bracketing each budget's estimated optimum."),
         print_spec: bool = typer.Option(False, "--print-spec", help="Print the resolved spec "
                                         "(YAML: --set overrides and defaults applied) and exit."),
         results: Path = typer.Option(Path("results"), help="Results root: finished runs of this "
                                      "spec there refine the optimum estimate."),
         device_memory: str = typer.Option(None, "--device-memory", help="Memory of each GPU the "
                                           "runs will train on (80GB, 24GiB): estimate in bf16 "
                                           "and warn for each run that will not fit."),
         processes: int = typer.Option(1, "--processes", min=1, help="Processes (GPUs) the runs "
                                       "will train on: the per-process batch, and the shards "
                                       "under train.parallel: fsdp."),
         overrides: list[str] = typer.Option(None, "--set", help=SET_HELP)) -> None:
    """Budgets, FLOPs per step and FLOP-matched step counts of every run (no training)."""
    from modexp.analysis.tables import print_plan
    from modexp.grid import plan_file, suggest_grid_file
    from modexp.memory import parse_size
    from modexp.plan import Target
    from modexp.spec.load import resolved_spec_yaml

    try:
        device_bytes = None if device_memory is None else parse_size(device_memory)
        if device_memory is not None and device_bytes is None:
            raise SpecError("--device-memory", [f"--device-memory: expected a size such as 80GB, "
                                                f"141GB or 24GiB, got {device_memory!r}"])
        if print_spec:
            sys.stdout.write(resolved_spec_yaml(spec, overrides or ()))
            return
        if suggest_grid:
            if overrides:
                raise SpecError("--set", ["--set: --suggest-grid reads the spec file as written; "
                                          "give --set without --suggest-grid"])
            sys.stdout.write(suggest_grid_file(spec, results))
            return
        _, p = plan_file(spec, results, overrides or (), Target(device_bytes, processes))
    except SpecError as e:
        _fail(e)
    if as_json:
        sys.stdout.write(json.dumps([r.to_dict() for r in p.runs], indent=2) + "\n")
    else:
        print_plan(p, out)
        for note in p.notes:  # e.g. the data source as resolved against the spec's folder
            out.print(note, markup=False, highlight=False, soft_wrap=True)
    _warn(p.warnings)


@app.command()
@_errors
def run(spec: Path = typer.Argument(..., help="Experiment spec (YAML)."),
        results: Path = typer.Option(Path("results"), help="Results root; runs go to RESULTS/<name>/."),
        only: list[str] = typer.Option(None, help="Run id or glob to train (repeatable)."),
        shard: str = typer.Option(None, help="i/n: train every n-th selected run, starting at i."),
        retry_failed: bool = typer.Option(False, help="Retry runs that failed, from their checkpoint."),
        device: str = typer.Option("auto", help=DEVICE_HELP),
        move_aside: bool = typer.Option(False, "--move-aside", help=(
            "Move runs trained with other settings (a changed spec or data) to "
            "RESULTS/<name>.aside-<time>/ and train them afresh.")),
        peak_tflops: float = typer.Option(None, min=0.0, help="Device peak TFLOP/s for MFU (default: "
                                          "a known GPU's bf16 peak, or the CPU peak `modexp bench` cached)."),
        plot_after: bool = typer.Option(False, "--plot", help="Run `modexp plot` at the end."),
        logger: list[str] = typer.Option(None, "--logger", help="Dashboard besides the spec's "
                                         "train.loggers: tensorboard or wandb (repeatable)."),
        as_json: bool = typer.Option(False, "--json", help="Print a JSON summary of the sweep at the end."),
        quiet: bool = typer.Option(False, "-q", "--quiet", help="Only warnings and errors."),
        verbose: bool = typer.Option(False, "-v", "--verbose", help="Also each run's plan as it starts."),
        status_every: float = typer.Option(60.0, help="Seconds between status lines when stderr "
                                           "is not a terminal (batch logs)."),
        overrides: list[str] = typer.Option(None, "--set", help=SET_HELP + " Recorded in each "
                                            "run's resolved spec (run.json).")) -> None:
    """Train every run of the spec, FLOP-matched and resumable; finished runs are skipped.

    Under `torchrun --nproc_per_node N -m modexp run SPEC` each run trains with DDP over N
    processes (the same global batch); only rank 0 writes files and prints.
    """
    import os

    from modexp.runs.progress import SweepProgress, sweep_json
    from modexp.runs.runner import parse_shard, run_sweep

    main_rank = os.environ.get("RANK", "0") == "0"  # torchrun's global rank; unset: one process
    ui = SweepProgress(err, verbosity=verbose - quiet, every=status_every) if main_rank else None
    try:
        report = run_sweep(spec, results, only, parse_shard(shard), retry_failed, device,
                           progress=ui, move_aside=move_aside, loggers=logger or (),
                           peak_tflops=peak_tflops, overrides=overrides or ())
    except SpecError as e:
        if not main_rank:  # every rank fails alike; one copy of the message is enough
            raise typer.Exit(2)
        _fail(e)
    if not main_rank:
        raise typer.Exit(1 if report.failed else 0)
    if as_json:
        sys.stdout.write(json.dumps(sweep_json(report), indent=2) + "\n")
    elif not quiet:
        out.print(f"results in {report.experiment_dir}; figures: modexp plot {report.experiment_dir}")
    if plot_after:
        plot(report.experiment_dir, "png", results, False)
    if report.failed:
        err.print(Text(f"{len(report.failed)} run(s) failed:", style="red")
                  + Text(f" {', '.join(report.failed)} (see error.log in each run folder; "
                         "--retry-failed retries them)"), highlight=False, soft_wrap=True)
        raise typer.Exit(1)


@app.command()
@_errors
def status(path: Path = typer.Argument(..., help="A spec (YAML) or its results folder."),
           results: Path = typer.Option(Path("results"), help="Results root, for a spec."),
           as_json: bool = typer.Option(False, "--json", help="Print JSON."),
           overrides: list[str] = typer.Option(None, "--set", help=SET_HELP + " For a spec: "
                                               "the run's --set, if it renamed the experiment.")) -> None:
    """Each run's state (planned, running, interrupted, done, failed, corrupt), progress and losses."""
    from modexp.runs.status import print_status, sweep_status

    try:
        rows = sweep_status(path, results, overrides or ())
    except SpecError as e:
        _fail(e)
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
    else:
        print_status(rows, out)
    unreadable = [r for r in rows if r["state"] == "corrupt"]
    if unreadable:  # shown in the table; the exit code says the folder needs attention
        _fail(SpecError(str(path), [f"{r['run_id']}: {r['error']}" for r in unreadable]))


@app.command()
@_errors
def plot(path: Path = typer.Argument(..., help="A results folder (or the spec that wrote it)."),
         fmt: str = typer.Option("png", "--format", help="Comma-separated: png, svg, pdf."),
         results: Path = typer.Option(Path("results"), help="Results root, for a spec."),
         as_json: bool = typer.Option(False, "--json", help="Print the isoFLOP fits, verdict "
                                      "and frontier as JSON (no figures written).")) -> None:
    """Loss vs training FLOPs, isoFLOP profiles and verdict, frontier, MoD routing, summary table."""
    from modexp.analysis.plot import plot_results, print_report
    from modexp.analysis.verdict import verdict_json
    from modexp.runs.status import experiment_dir

    if as_json:
        try:
            sys.stdout.write(json.dumps(verdict_json(experiment_dir(path, results)), indent=2) + "\n")
        except SpecError as e:
            _fail(e)
        return

    formats = [f.strip() for f in fmt.split(",") if f.strip()]
    try:
        bad = [f for f in formats if f not in ("png", "svg", "pdf")]
        if bad:
            raise SpecError("--format", [f"--format: {', '.join(bad)} not allowed; allowed: png, svg, pdf"])
        report = plot_results(experiment_dir(path, results), formats)
    except SpecError as e:
        _fail(e)
    from dataclasses import replace

    # warnings and missing runs on stderr, as text (print_report would style them with markup)
    print_report(replace(report, warnings=[], missing=[]), out)
    _warn(report.warnings)
    if report.missing:
        err.print(Text(f"missing ({len(report.missing)}):", style="yellow")
                  + Text(f" {', '.join(report.missing)}"), highlight=False, soft_wrap=True)


@app.command()
@_errors
def sample(run_dir: Path = typer.Argument(..., help="A run folder: results/<experiment>/<run_id>."),
           prompt: str = typer.Option(..., help="Text to continue (token ids for .bin data without a tokenizer)."),
           max_new_tokens: int = typer.Option(None, help="Tokens to generate (default: up to "
                                              "the trained seq_len; past it, a warning)."),
           temperature: float = typer.Option(0.8, help="Sampling temperature; 0 = greedy."),
           top_k: int = typer.Option(None, help="Sample from the k most likely tokens only."),
           seed: int = typer.Option(0, help="Sampling seed."),
           device: str = typer.Option("auto", help=DEVICE_HELP),
           as_json: bool = typer.Option(False, "--json", help="Print the sample and routing as JSON.")) -> None:
    """Continue a prompt with a run's checkpoint (KV cache; MoD routes causally) and show routing."""
    from modexp.runs.sample import print_sample, sample_run

    try:
        res = sample_run(run_dir, prompt, max_new_tokens, temperature, top_k, seed, device)
    except SpecError as e:
        _fail(e)
    if as_json:
        from dataclasses import asdict

        sys.stdout.write(json.dumps(asdict(res), indent=2) + "\n")
    else:
        print_sample(res, out)
    _warn(res.warnings)


@app.command()
@_errors
def prepare(inputs: list[str] = typer.Argument(..., help="Text files or folders, .jsonl[.gz], .parquet, or hf:NAME[:CONFIG]."),
            out_dir: Path = typer.Option(..., "--out", help="Token folder to create (must not exist)."),
            tokenizer: str = typer.Option("bytes", help="bytes, bpe:VOCAB (train byte-level BPE here) or PATH/tokenizer.json."),
            text_field: str = typer.Option("text", help="The text field of JSONL/Parquet/Hub rows."),
            val_fraction: float = typer.Option(0.01, help="Share of documents held out for validation."),
            encoder: str = typer.Option("auto", help="auto (tiktoken where it gives the tokenizers library's ids, else tokenizers), tokenizers or tiktoken."),
            quiet: bool = typer.Option(False, "-q", "--quiet", help="No progress, no summary line.")) -> None:
    """Tokenise a corpus into a token folder (train.bin, val.bin, tokenizer.json, meta.json)."""
    from modexp.data.prepare import prepare as run_prepare
    from modexp.runs.progress import PrepareProgress

    try:
        rep = run_prepare(inputs, out_dir, tokenizer, text_field, val_fraction,
                          None if quiet else PrepareProgress(err), encoder)
    except SpecError as e:
        _fail(e)
    for note in rep.notes:  # skipped files, stale temp folders removed, the encoder's fallback
        err.print(f"note: {note}", markup=False, highlight=False, soft_wrap=True)
    if quiet:
        return
    m = rep.meta
    mb = m["input_bytes"] / 1e6
    out.print(f"{rep.out}: {m['train_tokens']:,} train + {m['val_tokens']:,} val tokens "
              f"({m['dtype']}, vocab {m['vocab_size']:,}) from {m['documents']:,} documents, "
              f"{mb:,.1f} MB in {rep.seconds:.1f} s", highlight=False)


@app.command()
@_errors
def bench(target: Path = typer.Argument(..., help="A run folder, a results folder or a spec."),
          model: str = typer.Option(None, help="Model size name (default: the largest)."),
          batch_size: list[int] = typer.Option([1, 8], help="Decode batch size (repeatable)."),
          prompt_len: int = typer.Option(16, help="Prompt tokens per row."),
          new_tokens: int = typer.Option(128, help="Tokens decoded per row."),
          repeats: int = typer.Option(15, help="Timed decode repeats (median reported)."),
          train_repeats: int = typer.Option(10, help="Timed training steps (median reported)."),
          train: bool = typer.Option(True, "--train/--no-train", help="Also time a training step."),
          device: str = typer.Option("auto", help=DEVICE_HELP),
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
