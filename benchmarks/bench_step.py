"""Training-step time of MoD vs vanilla, side by side in one process, against the FLOP ratio.

For each model size of a spec (default: experiments/quickstart.yaml, its batch size and
seq_len) this times full training steps (forward + backward + AdamW step) of the vanilla and
the MoD variant, warm-up first, then interleaved repeats (so drift in machine load hits both
alike), and prints the median step times, the measured speedup, the analytic speedup
(flops.train_flops ratio) and the realisation = measured / analytic. MoD only pays off if
the routed path realises its FLOP saving in wall time (Raposo et al. 2024, arXiv 2404.02258).

    python benchmarks/bench_step.py [--spec experiments/quickstart.yaml] [--repeats 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from modexp import flops  # noqa: E402
from modexp.bench import Stepper, random_batch, time_interleaved  # noqa: E402  (shared timing)
from modexp.models.build import build_model  # noqa: E402
from modexp.spec import load_spec  # noqa: E402


def parse_args() -> argparse.Namespace:
    """Command-line options; defaults come from the spec."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--spec", default="experiments/quickstart.yaml")
    p.add_argument("--batch-size", type=int, help="default: the spec's train.batch_size")
    p.add_argument("--seq-len", type=int, help="default: the spec's data.seq_len")
    p.add_argument("--models", nargs="*", help="model names to run (default: all)")
    p.add_argument("--vanilla", help="vanilla variant name (default: the first one)")
    p.add_argument("--mod", help="MoD variant name (default: the first one)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps per model first")
    p.add_argument("--repeats", type=int, default=20, help="timed steps per model")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch CPU threads")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast")
    p.add_argument("--compile", action="store_true", help="torch.compile both models")
    return p.parse_args()


def pick(variants: dict, kind: str, name: str | None):
    """The named variant, or the first of that kind."""
    if name is not None:
        return variants[name]
    return next(v for v in variants.values() if v.kind == kind)


def bench_size(model_cfg, vanilla, mod, vocab, B, T, train_cfg, args) -> dict:
    """Median step times of both variants on the same batch, interleaved."""
    batch = random_batch(vocab, B, T)
    runs = {}
    for name, variant in (("vanilla", vanilla), ("mod", mod)):
        torch.manual_seed(0)
        net = build_model(model_cfg, variant, vocab, seq_len=T)
        runs[name] = Stepper(net, train_cfg, batch, args.device, args.bf16, args.compile)
    times = time_interleaved({name: s.step for name, s in runs.items()}, args.warmup, args.repeats)
    ms = {name: 1e3 * statistics.median(t) for name, t in times.items()}
    fl = {name: flops.train_flops(flops.arch_from_config(model_cfg, v, vocab), T)
          for name, v in (("vanilla", vanilla), ("mod", mod))}
    measured, analytic = ms["vanilla"] / ms["mod"], fl["vanilla"] / fl["mod"]
    return {"vanilla_ms": ms["vanilla"], "mod_ms": ms["mod"], "measured": measured,
            "analytic": analytic, "realisation": measured / analytic}


def main() -> None:
    """Benchmark every selected model size and print one row per size."""
    args = parse_args()
    torch.set_num_threads(args.threads)
    spec = load_spec(args.spec)
    B = args.batch_size or spec.train.batch_size
    T = args.seq_len or spec.data.seq_len
    vanilla = pick(spec.variants, "vanilla", args.vanilla)
    mod = pick(spec.variants, "mod", args.mod)
    print(f"device={args.device} threads={torch.get_num_threads()} batch={B} seq_len={T} "
          f"bf16={args.bf16} compile={args.compile} warmup={args.warmup} repeats={args.repeats}")
    print(f"mod: capacity={mod.capacity} route_every={mod.route_every} layers={mod.layers} "
          f"causal={mod.causal} gate={mod.gate}")
    print(f"{'size':<8}{'vanilla ms':>12}{'MoD ms':>10}{'measured':>10}{'analytic':>10}"
          f"{'realisation':>13}")
    for m in spec.models:
        if args.models and m.name not in args.models:
            continue
        r = bench_size(m, vanilla, mod, spec.data.vocab, B, T, spec.train, args)
        print(f"{m.name:<8}{r['vanilla_ms']:>12.1f}{r['mod_ms']:>10.1f}{r['measured']:>9.2f}x"
              f"{r['analytic']:>9.2f}x{r['realisation']:>13.2f}")


if __name__ == "__main__":
    main()
