"""What each kernel (modexp/kernels/) buys over the reference it replaces, in one process.

For one model size of a spec (default: experiments/quickstart.yaml's largest) and each of its
variants, this times whole training steps (forward + backward + the trainer's AdamW) and
batch-1 KV-cached decodes of the same weights, once with every kernel the CPU chooses and
once with one kernel set back to its reference (modexp/models/ops.REFERENCE), interleaved
(so drift in the machine's load hits both), and prints the median ratio, reference / kernels
(above 1: the kernel is faster), with its quartiles. "all" sets every kernel back: modexp
without modexp/kernels/.

    python benchmarks/bench_kernels.py [--spec experiments/quickstart.yaml] [--model NAME]
        [--repeats 21] [--threads 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from modexp.bench import Stepper, quartiles, random_batch, time_interleaved  # noqa: E402
from modexp.models import ops  # noqa: E402
from modexp.models.build import build_model, choose_kernels  # noqa: E402
from modexp.models.decode import generate  # noqa: E402
from modexp.spec import load_spec  # noqa: E402
from modexp.training.allocator import tune_cpu_allocator  # noqa: E402

TRAIN = ("rms_norm", "qkv_rope", "attention", "gather_rows")  # the training step's hot spots
DECODE = ("qkv_rope", "block_step", "routed_step", "decoder")  # a decode step's
ROUTED = ("gather_rows", "routed_step")  # hot spots of routed layers only


def parse_args() -> argparse.Namespace:
    """Command-line options; shapes come from the spec."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--spec", default="experiments/quickstart.yaml")
    p.add_argument("--model", help="model size (default: the largest)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=21, help="timed pairs per comparison")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--new-tokens", type=int, default=64, help="decode: tokens after a 16-token prompt")
    return p.parse_args()


def without(kernels: ops.Kernels, fields: tuple[str, ...]) -> ops.Kernels:
    """kernels with `fields` set back to the reference."""
    return dataclasses.replace(kernels, **{f: getattr(ops.REFERENCE, f) for f in fields})


def row(label: str, secs: dict[str, list[float]]) -> str:
    """Median reference / kernels ratio of adjacent runs, with quartiles."""
    ratios = [r / k for k, r in zip(secs["kernels"], secs["reference"])]
    lo, hi = quartiles(ratios)
    return (f"{label:<34}{1e3 * statistics.median(secs['kernels']):>11.2f}"
            f"{1e3 * statistics.median(secs['reference']):>13.2f}"
            f"{statistics.median(ratios):>13.3f} ({lo:.3f}-{hi:.3f})")


def main() -> None:
    """One table per variant: training step, then batch-1 decode, per kernel and all."""
    args = parse_args()
    torch.set_num_threads(args.threads)
    tune_cpu_allocator()  # as `modexp run` does on the CPU
    spec = load_spec(args.spec)
    size = (next(m for m in spec.models if m.name == args.model) if args.model
            else max(spec.models, key=lambda m: m.n_layers * m.d_model ** 2))
    B, T, vocab = spec.train.batch_size, spec.data.seq_len, spec.data.vocab
    batch, cpu = random_batch(vocab, B, T), choose_kernels("cpu")
    prompt = torch.randint(0, vocab, (1, 16), generator=torch.Generator().manual_seed(1))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, size {size.name} "
          f"(d {size.d_model}, {size.n_layers} layers), batch {B} x {T}; median of "
          f"{args.repeats} interleaved pairs after {args.warmup} warm-up")
    for vname, variant in spec.variants.items():
        print(f"\n{vname:<34}{'kernels ms':>11}{'reference ms':>13}{'ref / kernels':>13} (quartiles)")
        mine = lambda fields: [(f,) for f in fields if variant.kind == "mod" or f not in ROUTED]  # noqa: E731

        def net(kernels: ops.Kernels):
            torch.manual_seed(0)
            return build_model(size, variant, vocab, seq_len=T, kernels=kernels)

        for fields in mine(TRAIN) + [TRAIN]:
            steppers = {"kernels": Stepper(net(cpu), spec.train, batch, "cpu").step,
                        "reference": Stepper(net(without(cpu, fields)), spec.train, batch, "cpu").step}
            secs = time_interleaved(steppers, args.warmup, args.repeats)
            print(row(f"train step, {'all' if len(fields) > 1 else fields[0]}", secs))
        if variant.kind == "mod" and variant.causal == "none":
            continue
        for fields in mine(DECODE) + [DECODE + ("rms_norm", "attention")]:
            nets = {"kernels": net(cpu).eval(), "reference": net(without(cpu, fields)).eval()}

            def decode(m) -> float:
                t0 = time.perf_counter()
                generate(m, prompt, args.new_tokens)
                return time.perf_counter() - t0

            secs = time_interleaved({k: (lambda m=m: decode(m)) for k, m in nets.items()},
                                    args.warmup, args.repeats)
            label = "all" if len(fields) > 1 else fields[0]
            print(row(f"decode b1 ({args.new_tokens} tok), {label}", secs))


if __name__ == "__main__":
    main()
