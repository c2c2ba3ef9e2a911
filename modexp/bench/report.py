"""`modexp bench`'s output: plain data for --json, rich tables for the terminal."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from modexp.runs.sample import BASE, ROUTED
from modexp.training import mfu


@dataclass
class Ratio:
    """One measured MoD/vanilla comparison next to its analytic FLOP ratio."""

    what: str  # "decode b1", "decode b8", "train step"
    vanilla: float  # tok/s (decode) or ms (train)
    mod: float
    unit: str
    measured: float  # MoD speedup (>1: MoD faster): median over repeats of adjacent-run ratios
    analytic: float  # vanilla FLOPs / MoD FLOPs
    routed_frac: list[float] = field(default_factory=list)  # decode: measured, per routed layer
    spread: tuple[float, float] = (math.nan, math.nan)  # quartiles of the per-repeat speedups
    busy: list[float] = field(default_factory=list)  # batch > 1: steps in which some row ran
    weight_bound: float = math.nan  # batch > 1: vanilla / MoD weights read per step (see below)
    capacity: list[float] = field(default_factory=list)  # decode: per routed layer, k/T
    off_capacity: list[int] = field(default_factory=list)  # layers routed > 2 points off it
    routing: str = ""  # decode: routing_check.py's line (fractions, FLOP ratio, flag)
    step_flops: dict = field(default_factory=dict)  # train: FLOPs per step, vanilla and mod

    @property
    def realisation(self) -> float:
        """measured / analytic: 1.0 means the FLOP saving is fully realised."""
        return self.measured / self.analytic


@dataclass
class Memory:
    """Peak memory of one workload for both models, and what exactly was measured."""

    what: str
    vanilla_bytes: int
    mod_bytes: int
    kind: str


@dataclass
class BenchReport:
    """Everything `modexp bench` measured; print with print_bench."""

    target: str
    size: str
    weights: dict
    routing_note: str
    device: str
    threads: int
    settings: dict
    ratios: list[Ratio] = field(default_factory=list)
    memory: list[Memory] = field(default_factory=list)
    peak_flops: float | None = None  # the machine's measured matmul peak (modexp/training/peak.py)


def report_dict(report: BenchReport) -> dict:
    """Plain data (JSON-able), realisation included."""
    d = dataclasses.asdict(report)
    for r, obj in zip(d["ratios"], report.ratios):
        r["realisation"] = obj.realisation
        r |= step_throughput(obj, report.peak_flops)
    return d


def step_throughput(r: Ratio, peak: float | None) -> dict:
    """A training step's achieved FLOP/s and MFU, vanilla and MoD (empty for decode rows)."""
    if not r.step_flops:
        return {}
    secs = {BASE: r.vanilla / 1e3, ROUTED: r.mod / 1e3}  # median ms per step, by pair side
    return {k: mfu.throughput_fields(r.step_flops[k], secs[k], peak) for k in secs}


def _mib(n: int) -> str:
    return f"{n / 2 ** 20:,.1f} MiB"


def print_bench(report: BenchReport, console) -> None:
    """Speed table (measured vs analytic), memory table and what was measured (rich)."""
    from rich.table import Table

    t = Table(title=f"MoD vs vanilla, size {report.size} ({report.device}, "
                    f"{report.threads} threads)")
    for col in ("measurement", "vanilla", "MoD", "MoD speedup", "(quartiles)",
                "analytic FLOP ratio", "realisation", "MoD routed (causal)"):
        t.add_column(col, justify="left" if col == "measurement" else "right")
    for r in report.ratios:
        fmt = "{:,.0f} " + r.unit if r.unit == "tok/s" else "{:,.1f} " + r.unit
        frac = ", ".join(f"{f:.1%}" for f in r.routed_frac) or "-"
        t.add_row(r.what, fmt.format(r.vanilla), fmt.format(r.mod), f"{r.measured:.2f}x",
                  f"{r.spread[0]:.2f}-{r.spread[1]:.2f}", f"{r.analytic:.2f}x",
                  f"{r.realisation:.2f}", frac)
    console.print(t)
    for r in report.ratios:
        if r.routed_frac:  # the fraction it ran at vs capacity, flagged when > 2 points off
            console.print(f"{r.what}: {r.routing}", highlight=False,
                          style="bold red" if r.off_capacity else None)
        if r.busy:
            console.print(f"{r.what}: some row ran the routed layers in "
                          f"{', '.join(f'{b:.0%}' for b in r.busy)} of the steps; a decoder "
                          f"bound by weight reads (each such step reads the layer's weights) "
                          f"gains at most {r.weight_bound:.2f}x", highlight=False)
    if report.memory:
        m = Table(title="peak memory")
        for col in ("workload", "vanilla", "MoD", "MoD / vanilla", "measured as"):
            m.add_column(col, justify="left" if col in ("workload", "measured as") else "right")
        for row in report.memory:
            m.add_row(row.what, _mib(row.vanilla_bytes), _mib(row.mod_bytes),
                      f"{row.mod_bytes / row.vanilla_bytes:.2f}", row.kind)
        console.print(m)
    if report.peak_flops:
        console.print(f"matmul peak of this machine: {report.peak_flops / 1e9:,.0f} GFLOP/s "
                      "(modexp/training/peak.py: best of 10 (1024, 1024) @ (1024, 1024), cached)",
                      highlight=False)
    for r in report.ratios:
        for kind, t in step_throughput(r, report.peak_flops).items():
            share = f", MFU {t['mfu']:.0%} of the matmul peak" if t["mfu"] is not None else ""
            console.print(f"{r.what} {kind}: {t['flops_per_s'] / 1e9:,.1f} GFLOP/s{share}",
                          highlight=False)
    s = report.settings
    train = (f"; training: batch {s['train_batch']} x {s['seq_len']}, median of "
             f"{s['train_repeats']}" if any(r.unit == "ms" for r in report.ratios) else "")
    console.print(f"weights: vanilla {report.weights['vanilla']}; MoD {report.weights['mod']}\n"
                  f"routing: {report.routing_note}\n"
                  f"decode: {s['prompt_len']}-token prompts ({s['prompts']}), "
                  f"{s['new_tokens']} new tokens, temperature {s['temperature']}, median of "
                  f"{s['repeats']} after {s['warmup']} warm-up{train}\n"
                  "analytic: decode = flops.decode_flops of the timed steps (KV cache, causal "
                  "attention), MoD at the measured routed fractions; training = train_flops per "
                  "sequence",
                  highlight=False)
