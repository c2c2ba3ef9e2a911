"""torch.compile on or off: the same training step, eager and compiled, side by side in one process.

For each model size of a spec (default: experiments/quickstart.yaml) and each variant (vanilla
and MoD), two copies of the same model (same init) take full training steps (forward, backward,
the trainer's AdamW) on the same batch: one eager, one through torch.compile as
`train.compile: true` does. After warm-up (compilation happens there and is timed apart), the
two are timed interleaved, and the ratio compiled / eager is the median of per-pair ratios,
quartiles beside it: below 1 compile is faster. Issue 15 asks whether compile should be the
CPU default; a clear win is a ratio well below 1 at every size, compile time included over a
run's steps.

    python benchmarks/bench_compile.py [--spec experiments/quickstart.yaml] [--repeats 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from modexp.bench.timing import Stepper, quartiles, random_batch, time_interleaved  # noqa: E402
from modexp.models.build import build_model  # noqa: E402
from modexp.plan import build_plan  # noqa: E402
from modexp.spec import load_spec  # noqa: E402


def parse_args() -> argparse.Namespace:
    """Command-line options; defaults come from the spec."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--spec", default="experiments/quickstart.yaml")
    p.add_argument("--models", nargs="*", help="model names to run (default: all)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (compiles)")
    p.add_argument("--repeats", type=int, default=20, help="timed step pairs")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch CPU threads")
    return p.parse_args()


def bench_pair(model_cfg, variant, vocab: int, B: int, T: int, train_cfg, args) -> dict:
    """Eager vs compiled step times of one model and variant on one batch, interleaved."""
    batch = random_batch(vocab, B, T)
    steppers = {}
    for name, compiled in (("eager", False), ("compiled", True)):
        torch.manual_seed(0)
        steppers[name] = Stepper(build_model(model_cfg, variant, vocab, seq_len=T), train_cfg, batch, "cpu",
                                 compile=compiled)
    t0 = time.perf_counter()
    for _ in range(args.warmup):  # the first compiled step compiles; later ones may recompile
        steppers["compiled"].step()
    compile_s = time.perf_counter() - t0
    for _ in range(args.warmup):
        steppers["eager"].step()
    secs = time_interleaved({k: s.step for k, s in steppers.items()}, 0, args.repeats)
    ratios = [c / e for e, c in zip(secs["eager"], secs["compiled"])]
    return {"eager_ms": 1e3 * statistics.median(secs["eager"]),
            "compiled_ms": 1e3 * statistics.median(secs["compiled"]),
            "ratio": statistics.median(ratios), "q": quartiles(ratios), "compile_s": compile_s}


def main() -> None:
    """One row per size and variant: eager and compiled step ms, ratio, warm-up time."""
    args = parse_args()
    torch.set_num_threads(args.threads)
    spec = load_spec(args.spec)
    plan = build_plan(spec)
    B, T, vocab = spec.train.batch_size, spec.data.seq_len, spec.data.vocab
    print(f"torch {torch.__version__} cpu threads={torch.get_num_threads()} batch={B} "
          f"seq_len={T} warmup={args.warmup} repeats={args.repeats}")
    print(f"{'size':<7}{'variant':<9}{'eager ms':>10}{'compiled ms':>13}{'ratio':>8}"
          f"{'quartiles':>14}{'warm-up s':>11}{'steps':>7}{'net':>7}")
    for m in spec.models:
        if args.models and m.name not in args.models:
            continue
        for vname, variant in spec.variants.items():
            r = bench_pair(m, variant, vocab, B, T, spec.train, args)
            steps = max((p.steps for p in plan.runs if p.model == m.name and p.variant == vname),
                        default=0)
            # the run's whole training time compiled vs eager, compilation included
            net = (r["compile_s"] + steps * r["compiled_ms"] / 1e3) / max(steps * r["eager_ms"] / 1e3, 1e-9)
            lo, hi = r["q"]
            print(f"{m.name:<7}{vname:<9}{r['eager_ms']:>10.2f}{r['compiled_ms']:>13.2f}"
                  f"{r['ratio']:>8.3f}{f'{lo:.3f}-{hi:.3f}':>14}{r['compile_s']:>11.1f}"
                  f"{steps:>7}{net:>7.2f}")


if __name__ == "__main__":
    main()
