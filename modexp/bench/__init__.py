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

One concern per module: timing.py (interleaved timing, the training Stepper), memory.py (peak
memory), report.py (the report's data, JSON and tables);
this module measures MoD against vanilla.
"""

from __future__ import annotations

import copy
import dataclasses
import statistics
from pathlib import Path
from typing import Callable

import torch

from modexp import flops
from modexp.bench.memory import bench_memory
# print_bench, report_dict, Stepper and random_batch: imported from here by the CLI and scripts
from modexp.bench.report import BenchReport, Ratio, print_bench, report_dict  # noqa: F401
from modexp.bench.timing import Stepper, quartiles, random_batch, time_interleaved  # noqa: F401
from modexp.runs.sample import BASE, ROUTED, Pair, resolve
from modexp.spec import SpecError
from modexp.training.peak import cached_peak


# ---------------------------------------------------------------- routing of fresh models
def calibrate_routing(net, sample: torch.Tensor) -> str:
    """Set each routed layer's threshold so a `capacity` fraction of `sample` (B, T) routes
    causally (calibrate.py: layer by layer on the causal pass, as training does).

    Fresh weights decide nothing worth adapting to, and the timing depends only on how many
    tokens route: one global threshold per layer (`threshold: calibrated`) routes exactly the
    capacity, where a prefix threshold would only come near it.
    """
    from modexp.training.calibrate import calibrate_thresholds

    for decision in net.decisions():
        decision.set_prefix_prior(None)
    net.rotary.reserve(sample.size(1))  # the sample runs as long as a generation
    calibrate_thresholds(net, [sample])
    return ("fresh init: one decision threshold per layer, set so the causal routed fraction "
            "equals the capacity")


# ---------------------------------------------------------------- the measurements
def _arch(pair: Pair, kind: str) -> flops.Arch:
    """flops.py's description of the pair's vanilla or MoD model."""
    return flops.arch_from_config(pair.model_cfg, pair.variants[kind], pair.spec.data.vocab)


def decode_flop_ratio(pair: Pair, prompt_len: int, steps: int, routed_frac: list[float]) -> float:
    """FLOPs of the timed decode steps, vanilla / MoD (routed layers at measured fractions)."""
    arch_m = _arch(pair, ROUTED)
    fracs = iter(routed_frac)
    caps = tuple(None if c is None else next(fracs) for c in arch_m.capacities)
    measured = dataclasses.replace(arch_m, capacities=caps)
    return (flops.decode_flops(_arch(pair, BASE), prompt_len, steps)
            / flops.decode_flops(measured, prompt_len, steps))


def train_flop_ratio(pair: Pair, seq_len: int) -> float:
    """Training FLOPs per sequence, vanilla / MoD."""
    return (flops.train_flops(_arch(pair, BASE), seq_len)
            / flops.train_flops(_arch(pair, ROUTED), seq_len))


def weight_read_ratio(pair: Pair, busy: list[float]) -> float:
    """Weights read per decode step, vanilla / MoD, if routed layer i is read in busy[i] of them.

    A batched decoder on a CPU streams every weight it uses once per step, whatever the
    number of rows: MoD saves a routed layer's reads only in steps where no row routes
    there, (1 - c)^B of them at capacity c. That bounds a weight-bound decoder's speedup.
    """
    arch = _arch(pair, ROUTED)
    block, head = flops.block_params(arch), arch.d_model * arch.vocab
    n_dense = arch.n_layers - arch.n_routed
    mod = n_dense * block + sum(busy) * block + arch.n_routed * flops.router_params(arch) + head
    return (arch.n_layers * block + head) / mod


def bench_decode(pair: Pair, batch: int, prompts: torch.Tensor, new_tokens: int, warmup: int,
                 repeats: int, temperature: float) -> Ratio:
    """Decode tokens/s of both models, interleaved; medians. Run i of each model decodes
    the prompts[i*batch:(i+1)*batch] (the same for both): a routed fraction measured on one
    prompt's continuations would be that prompt's, not the model's."""
    from modexp.models.decode import generate

    fracs: dict[str, list] = {BASE: [], ROUTED: []}
    busy = []  # per run: per routed layer, the fraction of steps in which some row ran it

    def run(kind: str) -> Callable[[], float]:
        def once() -> float:
            i = len(fracs[kind])
            g = generate(pair.nets[kind], prompts[i * batch:(i + 1) * batch], new_tokens,
                         temperature, seed=i)
            fracs[kind].append(g.routed_frac())
            if kind == ROUTED and g.routed is not None:
                busy.append(g.routed.any(dim=2).float().mean(dim=1).tolist())  # (R,)
            return g.decode_tokens_per_s
        return once

    tok_s = time_interleaved({k: run(k) for k in (BASE, ROUTED)}, warmup, repeats)
    v, m = statistics.median(tok_s[BASE]), statistics.median(tok_s[ROUTED])
    frac = [statistics.mean(col) for col in zip(*fracs[ROUTED])]  # every run, warm-up included
    analytic = decode_flop_ratio(pair, prompts.size(1), new_tokens - 1, frac)  # the timed steps
    paired = [b / a for a, b in zip(tok_s[BASE], tok_s[ROUTED])]  # adjacent runs
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
                for k in (BASE, ROUTED)}  # copies: training must not change the weights
    secs = time_interleaved({k: s.step for k, s in steppers.items()}, warmup, repeats)
    v, m = (1e3 * statistics.median(secs[k]) for k in (BASE, ROUTED))
    paired = [a / b for a, b in zip(secs[BASE], secs[ROUTED])]  # adjacent steps
    step_flops = {k: B * flops.train_flops(_arch(pair, k), T) for k in (BASE, ROUTED)}
    return Ratio("train step", v, m, "ms", statistics.median(paired), train_flop_ratio(pair, T),
                 spread=quartiles(paired), step_flops=step_flops), steppers


def _prompts(pair: Pair, n: int, length: int, seed: int) -> tuple[torch.Tensor, str]:
    """n prompts (n, length): held-out text windows for trained models, else random tokens."""
    trained = any(w != "fresh init" for w in pair.weights.values())
    if trained:
        from modexp.data.corpus import SourceError
        from modexp.data.tokens import TokenData

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
          temperature: float = 1.0, seed: int = 0, peak: bool = True) -> BenchReport:
    """Benchmark MoD against vanilla of the same size: decode, training step, peak memory.

    peak: also the machine's matmul peak (cached per machine; measured once), for MFU.
    """
    from modexp.device import resolve_device

    device = resolve_device(device)
    if threads:
        torch.set_num_threads(threads)
    bad = check_counts(batch_sizes, prompt_len, new_tokens, warmup, repeats, train, train_repeats)
    if bad:
        raise SpecError("modexp bench", bad)
    pair = resolve(target, model, device)
    too_big = check_memory(pair, batch_sizes, prompt_len, new_tokens, warmup, repeats,
                           train_batch or pair.spec.train.batch_size if train else None, device)
    if too_big:
        raise SpecError("modexp bench", too_big)
    if pair.variants[ROUTED].causal == "none":
        raise SpecError(str(target), ["the MoD variant has causal: none: it cannot decode token "
                                      "by token (use causal: predictor or aux_loss)"])
    note = "trained checkpoint: causal decisions at its own thresholds (see the capacity check)"
    if pair.weights[ROUTED] == "fresh init":
        sample = torch.randint(0, pair.spec.data.vocab, (8, prompt_len + new_tokens),
                               generator=torch.Generator().manual_seed(seed + 1))
        note = calibrate_routing(pair.nets[ROUTED], sample.to(device))
    # a fresh prompt per run (the rows of one run's batch differ too)
    prompts, source = _prompts(pair, max(batch_sizes) * (warmup + repeats), prompt_len, seed)
    prompts, source = prompts.to(device), f"{source}, new ones every run"
    settings = {"prompt_len": prompt_len, "new_tokens": new_tokens, "prompts": source,
                "temperature": temperature, "warmup": warmup, "repeats": repeats,
                "train_batch": train_batch or pair.spec.train.batch_size,
                "seq_len": pair.spec.data.seq_len, "train_repeats": train_repeats}
    report = BenchReport(str(target), pair.model_cfg.name, pair.weights, note, device,
                         torch.get_num_threads(), settings,
                         peak_flops=cached_peak(device) if peak else None)
    for b in batch_sizes:
        report.ratios.append(bench_decode(pair, b, prompts, new_tokens, warmup, repeats,
                                          temperature))
        check_capacity(pair, report.ratios[-1], prompt_len, new_tokens - 1)
    steppers = None
    if train:
        ratio, steppers = bench_train(pair, warmup, train_repeats, device, train_batch)
        report.ratios.append(ratio)
    if memory:
        report.memory = bench_memory(pair, prompts[:1], new_tokens, device, steppers)
    return report


def check_counts(batch_sizes, prompt_len: int, new_tokens: int, warmup: int, repeats: int,
                 train: bool, train_repeats: int) -> list[str]:
    """One problem per count flag below what a measurement needs (a median needs one timed
    run; a decode timing needs two new tokens: the first comes from the prefill)."""
    checks = ((prompt_len >= 1, f"--prompt-len: must be at least 1, got {prompt_len}"),
              (new_tokens >= 2, f"--new-tokens: must be at least 2, got {new_tokens}"),
              (repeats >= 1, f"--repeats: must be at least 1, got {repeats}"),
              (warmup >= 0, f"warmup: must be at least 0, got {warmup}"),
              (not train or train_repeats >= 1, f"--train-repeats: must be at least 1 (or "
                                                f"--no-train), got {train_repeats}"),
              (bool(batch_sizes) and min(batch_sizes, default=0) >= 1,
               f"--batch-size: each must be at least 1, got {', '.join(map(str, batch_sizes)) or 'none'}"))
    return [m for ok, m in checks if not ok]


def check_memory(pair: Pair, batch_sizes, prompt_len: int, new_tokens: int, warmup: int,
                 repeats: int, train_batch: int | None, device: str) -> list[str]:
    """A problem per workload that cannot fit the free memory (memory.py's estimates): the
    largest decode batch with the prompts of every run held (warm-up included), and the
    training step of both models at once (each holds its weights, grads and AdamW state)."""
    from modexp.memory import device_available_bytes, generation_memory, size, training_memory
    from modexp.runs.sample import check_generation_memory

    free, runs = device_available_bytes(device), warmup + repeats
    if free is None:
        return []
    batch = max(batch_sizes)  # the largest batch bounds them all
    one = batch * prompt_len * 8  # one run's int64 prompts; every run's are held
    # both: vanilla's KV cache is the larger, MoD's routed prefill grows with the prompt squared
    archs = [_arch(pair, k) for k in (BASE, ROUTED)]
    problems = check_generation_memory(archs, batch, prompt_len, new_tokens, device,
                                       ("--new-tokens", "--batch-size", "--prompt-len"), one)
    decode = max(generation_memory(a, batch, prompt_len, new_tokens).total for a in archs)
    if not problems and decode + runs * one > free:
        problems.append(f"--repeats: at most {(free - decode) // one - warmup:,} here: the prompts of "
                        f"{runs:,} runs (warm-up included) of {batch} x {prompt_len:,} tokens need "
                        f"{size(runs * one)}, and {device} has {size(free)} free")
    if train_batch is not None:
        dtype = "bfloat16" if device.startswith("cuda") else "float32"
        steps = [training_memory(_arch(pair, k), pair.spec.data.seq_len, train_batch, dtype)
                 for k in (BASE, ROUTED)]
        held = sum(e.params + e.grads + e.optimizer for e in steps)
        peak = held + max(e.total - e.params - e.grads - e.optimizer for e in steps)
        if peak > free:
            problems.append(f"--train: the training step of batch {train_batch} x "
                            f"{pair.spec.data.seq_len} needs about {size(peak)} for both "
                            f"models, and {device} has {size(free)} free; allowed: --no-train, "
                            "or a spec with a smaller train.batch_size")
    return problems


def check_capacity(pair: Pair, r: Ratio, prompt_len: int, steps: int) -> None:
    """Record on a decode measurement its routed fractions vs capacity (routing_check.py)."""
    from modexp.models.routing_check import check_routing

    spec = pair.spec
    check = check_routing(pair.model_cfg, pair.variants[ROUTED], spec.data.vocab,
                          spec.data.seq_len, r.routed_frac, prompt_len, steps)
    r.capacity, r.off_capacity, r.routing = check.capacity, check.off, check.summary()
