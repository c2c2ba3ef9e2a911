"""`modexp bench`: what MoD's FLOP saving buys in wall time and memory, MoD next to vanilla.

One process, the same inputs for both models, warm-up first, then interleaved repeats (so
drift in machine load hits both alike) and medians; a speedup is the median of the ratios of
adjacent runs, robust to load that comes and goes on a shared machine. Each speedup is printed
next to the analytic FLOP ratio it should approach, and realisation = measured / analytic:
- decode tokens/s at batch 1 and 8 (KV-cached sampling, MoD on its causal routing), against
  the per-token inference_flops ratio at the MEASURED routed fraction of each routed layer;
- training step time (forward + backward + the trainer's AdamW), against train_flops;
- peak memory of both (CUDA: allocator peak; CPU: torch's own allocations, via the profiler).
Trained checkpoints are used when the target has them; otherwise freshly initialised models,
whose predictor biases are set so the causal routed fraction equals the capacity (labelled).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import statistics
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from modexp import flops
from modexp.sample import Pair, resolve
from modexp.spec import SpecError


# ---------------------------------------------------------------- shared timing helpers
def sync(device: torch.device | str) -> None:
    """Wait for queued GPU work, so wall time covers it."""
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def time_interleaved(fns: dict[str, Callable[[], float]], warmup: int,
                     repeats: int) -> dict[str, list[float]]:
    """Each fn returns its own timing; warm each up, then run them in turn `repeats` times."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    out = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            out[name].append(fn())
    return out


class Stepper:
    """One model with the trainer's optimiser and a fixed batch; step() times one training step."""

    def __init__(self, net: torch.nn.Module, train_cfg, batch: tuple[torch.Tensor, torch.Tensor],
                 device: str, bf16: bool = False, compile: bool = False):
        from modexp.train import make_optimizer  # the trainer's AdamW, as trained

        self.net = net.to(device).train()
        self.opt = make_optimizer(self.net, train_cfg, torch.device(device))
        self.fwd = torch.compile(self.net) if compile else self.net
        self.idx, self.targets = (t.to(device) for t in batch)
        self.device, self.bf16 = device, bf16

    def step(self) -> float:
        """Seconds for forward + backward + AdamW step (synchronised on CUDA)."""
        sync(self.device)
        t0 = time.perf_counter()
        with torch.autocast(self.device.split(":")[0], torch.bfloat16, enabled=self.bf16):
            out = self.fwd(self.idx, self.targets)
        out.loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        sync(self.device)
        return time.perf_counter() - t0


def random_batch(vocab: int, B: int, T: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and next-token targets (B, T) of seeded random tokens."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, vocab, (B, T + 1), generator=g)
    return tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()


# ---------------------------------------------------------------- routing of fresh models
def calibrate_routing(net, sample: torch.Tensor) -> str:
    """Set each routed layer's threshold so a `capacity` fraction of `sample` (B, T) routes
    causally (calibrate.py: layer by layer on the causal pass, as training does)."""
    from modexp.calibrate import calibrate_thresholds

    calibrate_thresholds(net, [sample])
    return "fresh init: decision thresholds set so the causal routed fraction equals the capacity"


# ---------------------------------------------------------------- the measurements
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


def _arch(pair: Pair, kind: str) -> flops.Arch:
    """flops.py's description of the pair's vanilla or MoD model."""
    return flops.arch_from_config(pair.model_cfg, pair.variants[kind], pair.spec.data.vocab)


def decode_flop_ratio(pair: Pair, prompt_len: int, steps: int, routed_frac: list[float]) -> float:
    """FLOPs of the timed decode steps, vanilla / MoD (routed layers at measured fractions)."""
    arch_m = _arch(pair, "mod")
    fracs = iter(routed_frac)
    caps = tuple(None if c is None else next(fracs) for c in arch_m.capacities)
    measured = dataclasses.replace(arch_m, capacities=caps)
    return (flops.decode_flops(_arch(pair, "vanilla"), prompt_len, steps)
            / flops.decode_flops(measured, prompt_len, steps))


def train_flop_ratio(pair: Pair, seq_len: int) -> float:
    """Training FLOPs per sequence, vanilla / MoD."""
    return (flops.train_flops(_arch(pair, "vanilla"), seq_len)
            / flops.train_flops(_arch(pair, "mod"), seq_len))


def weight_read_ratio(pair: Pair, busy: list[float]) -> float:
    """Weights read per decode step, vanilla / MoD, if routed layer i is read in busy[i] of them.

    A batched decoder on a CPU streams every weight it uses once per step, whatever the
    number of rows: MoD saves a routed layer's reads only in steps where no row routes
    there, (1 - c)^B of them at capacity c. That bounds a weight-bound decoder's speedup.
    """
    arch = _arch(pair, "mod")
    block, head = flops.block_params(arch), arch.d_model * arch.vocab
    n_dense = arch.n_layers - arch.n_routed
    mod = n_dense * block + sum(busy) * block + arch.n_routed * flops.router_params(arch) + head
    return (arch.n_layers * block + head) / mod


def bench_decode(pair: Pair, batch: int, prompt: torch.Tensor, new_tokens: int, warmup: int,
                 repeats: int, temperature: float) -> Ratio:
    """Decode tokens/s of both models on the same prompt, interleaved; medians."""
    from modexp.decode import generate

    fracs: dict[str, list] = {"vanilla": [], "mod": []}
    busy = []  # per run: per routed layer, the fraction of steps in which some row ran it

    def run(kind: str) -> Callable[[], float]:
        def once() -> float:
            g = generate(pair.nets[kind], prompt, new_tokens, temperature, seed=len(fracs[kind]))
            fracs[kind].append(g.routed_frac())
            if kind == "mod" and g.routed is not None:
                busy.append(g.routed.any(dim=2).float().mean(dim=1).tolist())  # (R,)
            return g.decode_tokens_per_s
        return once

    tok_s = time_interleaved({k: run(k) for k in ("vanilla", "mod")}, warmup, repeats)
    v, m = statistics.median(tok_s["vanilla"]), statistics.median(tok_s["mod"])
    frac = [statistics.mean(col) for col in zip(*fracs["mod"])]  # every run, warm-up included
    analytic = decode_flop_ratio(pair, prompt.size(1), new_tokens - 1, frac)  # the timed steps
    paired = [b / a for a, b in zip(tok_s["vanilla"], tok_s["mod"])]  # adjacent runs
    ratio = Ratio(f"decode b{batch}", v, m, "tok/s", statistics.median(paired), analytic, frac,
                  quartiles(paired))
    if batch > 1 and busy:
        ratio.busy = [statistics.mean(col) for col in zip(*busy)]
        ratio.weight_bound = weight_read_ratio(pair, ratio.busy)
    return ratio


def bench_train(pair: Pair, warmup: int, repeats: int, device: str,
                batch: int | None = None) -> tuple[Ratio, dict[str, Stepper]]:
    """Median training step times of both models on one random batch, interleaved."""
    spec = pair.spec
    B, T = batch or spec.train.batch_size, spec.data.seq_len
    data = random_batch(spec.data.vocab, B, T)
    steppers = {k: Stepper(copy.deepcopy(pair.nets[k]), spec.train, data, device)
                for k in ("vanilla", "mod")}  # copies: training must not change the weights
    secs = time_interleaved({k: s.step for k, s in steppers.items()}, warmup, repeats)
    v, m = (1e3 * statistics.median(secs[k]) for k in ("vanilla", "mod"))
    paired = [a / b for a, b in zip(secs["vanilla"], secs["mod"])]  # adjacent steps
    return Ratio("train step", v, m, "ms", statistics.median(paired), train_flop_ratio(pair, T),
                 spread=quartiles(paired)), steppers


def quartiles(xs: list[float]) -> tuple[float, float]:
    """First and third quartile (the spread a noisy shared machine puts on a median)."""
    if len(xs) < 2:
        return (xs[0], xs[0]) if xs else (math.nan, math.nan)
    q = statistics.quantiles(xs, n=4)
    return q[0], q[2]


@contextmanager
def _quiet_stderr():
    """The profiler prints start/stop lines on the C++ stderr; keep the report clean."""
    saved = os.dup(2)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_bytes(fn: Callable[[], object], device: str, resident: int) -> tuple[int, str]:
    """Peak bytes while fn runs: resident (already allocated) + the transient peak above it."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated(), "CUDA max_memory_allocated"
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]")
    live = peak = 0
    for _, n in events:  # allocations (+) and frees (-) in time order
        live += n
        peak = max(peak, live)
    return resident + peak, "CPU: params (+ optimiser state) + torch's peak allocations (profiler)"


def _state_bytes(net, opt=None) -> int:
    """Bytes of parameters and buffers (and optimiser state) held before a workload starts."""
    tensors = list(net.parameters()) + list(net.buffers())
    if opt is not None:
        tensors += [t for s in opt.state.values() for t in s.values() if torch.is_tensor(t)]
    return sum(t.numel() * t.element_size() for t in tensors)


def bench_memory(pair: Pair, prompt: torch.Tensor, new_tokens: int, device: str,
                 steppers: dict[str, Stepper] | None) -> list[Memory]:
    """Peak memory of one batch-1 generation and (with steppers) of one training step."""
    from modexp.decode import generate

    kinds, gens = ("vanilla", "mod"), {}
    run = {k: lambda k=k: gens.setdefault(k, generate(pair.nets[k], prompt, new_tokens, 1.0))
           for k in kinds}  # keep each generation: its caches are measured below
    peaks = {k: peak_bytes(run[k], device, _state_bytes(pair.nets[k])) for k in kinds}
    cache = {k: sum(c.nbytes for c in gens[k].caches) for k in kinds}
    out = [Memory(f"decode b{prompt.size(0)}", peaks["vanilla"][0], peaks["mod"][0],
                  peaks["mod"][1]),
           Memory("  of which KV cache", cache["vanilla"], cache["mod"], "cache buffers, exact")]
    if steppers:
        peaks = {k: peak_bytes(s.step, device, _state_bytes(s.net, s.opt))
                 for k, s in steppers.items()}
        out.append(Memory("train step", peaks["vanilla"][0], peaks["mod"][0], peaks["mod"][1]))
    return out


def _prompts(pair: Pair, n: int, length: int, seed: int) -> tuple[torch.Tensor, str]:
    """n prompts (n, length): held-out text windows for trained models, else random tokens."""
    trained = any(w != "fresh init" for w in pair.weights.values())
    if trained:
        from modexp.corpus import SourceError
        from modexp.data import TokenData

        d = pair.spec.data
        try:
            val = TokenData(d.source, length, d.val_fraction).val_batches(1, n)[0][0]
            return val, "held-out text windows"
        except (SourceError, ValueError, OSError) as e:  # the corpus may live elsewhere
            note = f"random tokens (data unavailable: {e})"
    else:
        note = "random tokens"
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, pair.spec.data.vocab, (n, length), generator=g), note


def bench(target: str | Path, model: str | None = None, batch_sizes: tuple[int, ...] = (1, 8),
          prompt_len: int = 16, new_tokens: int = 128, warmup: int = 2, repeats: int = 5,
          train: bool = True, train_batch: int | None = None, train_repeats: int = 5,
          memory: bool = True, device: str = "auto", threads: int | None = None,
          temperature: float = 1.0, seed: int = 0) -> BenchReport:
    """Benchmark MoD against vanilla of the same size: decode, training step, peak memory."""
    from modexp.device import resolve_device

    device = resolve_device(device)
    if threads:
        torch.set_num_threads(threads)
    if prompt_len < 1 or new_tokens < 2 or repeats < 1 or not batch_sizes or min(batch_sizes) < 1:
        raise SpecError("bench", ["need prompt_len >= 1, new_tokens >= 2, repeats >= 1 and a "
                                  f"batch size >= 1; got --prompt-len {prompt_len}, --new-tokens "
                                  f"{new_tokens}, --repeats {repeats}, --batch-size "
                                  f"{', '.join(map(str, batch_sizes)) or 'none'}"])
    pair = resolve(target, model, device)
    if pair.variants["mod"].causal == "none":
        raise SpecError(str(target), ["the MoD variant has causal: none: it cannot decode token "
                                      "by token (use causal: predictor or aux_loss)"])
    note = "trained checkpoint: causal decisions at its own thresholds (see the capacity check)"
    if pair.weights["mod"] == "fresh init":
        sample = torch.randint(0, pair.spec.data.vocab, (8, prompt_len + new_tokens),
                               generator=torch.Generator().manual_seed(seed + 1))
        note = calibrate_routing(pair.nets["mod"], sample.to(device))
    prompts, source = _prompts(pair, max(batch_sizes), prompt_len, seed)
    prompts = prompts.to(device)
    settings = {"prompt_len": prompt_len, "new_tokens": new_tokens, "prompts": source,
                "temperature": temperature, "warmup": warmup, "repeats": repeats,
                "train_batch": train_batch or pair.spec.train.batch_size,
                "seq_len": pair.spec.data.seq_len, "train_repeats": train_repeats}
    report = BenchReport(str(target), pair.model_cfg.name, pair.weights, note, device,
                         torch.get_num_threads(), settings)
    for b in batch_sizes:
        report.ratios.append(bench_decode(pair, b, prompts[:b], new_tokens, warmup, repeats,
                                          temperature))
        check_capacity(pair, report.ratios[-1], prompt_len, new_tokens - 1)
    steppers = None
    if train:
        ratio, steppers = bench_train(pair, warmup, train_repeats, device, train_batch)
        report.ratios.append(ratio)
    if memory:
        report.memory = bench_memory(pair, prompts[:1], new_tokens, device, steppers)
    return report


# ---------------------------------------------------------------- output
def report_dict(report: BenchReport) -> dict:
    """Plain data (JSON-able), realisation included."""
    d = dataclasses.asdict(report)
    for r, obj in zip(d["ratios"], report.ratios):
        r["realisation"] = obj.realisation
    return d


def check_capacity(pair: Pair, r: Ratio, prompt_len: int, steps: int) -> None:
    """Record on a decode measurement its routed fractions vs capacity (routing_check.py)."""
    from modexp.routing_check import check_routing

    spec = pair.spec
    check = check_routing(pair.model_cfg, pair.variants["mod"], spec.data.vocab,
                          spec.data.seq_len, r.routed_frac, prompt_len, steps)
    r.capacity, r.off_capacity, r.routing = check.capacity, check.off, check.summary()


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
