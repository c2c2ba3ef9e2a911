"""The training step with causal attention through SDPA or through batched matmuls.

For each model size of a spec (default: experiments/quickstart.yaml) and each variant, two
copies of the same model (same init) take full training steps (forward, backward, the
trainer's AdamW) on the same batch, interleaved in one process: one with every causal
attention of the step through `F.scaled_dot_product_attention` (the CPU flash kernel), one
through `attention.matmul_attention` (baddbmm with a causal bias, softmax, bmm; two causal
query blocks above 64 positions). The ratio matmul / SDPA is the median of per-pair ratios,
quartiles beside it: below 1 the matmuls win. `attention.matmul_path`'s limits (heads up to
64 wide, sequences up to 128) come from tables like this one; the last column says which path
modexp takes at that size.

    python benchmarks/bench_attention.py [--spec experiments/quickstart.yaml] [--repeats 41]

`--alone B,nh,T,hs ...` times attention by itself instead (forward and backward of one layer's
causal attention on random q, k, v): SDPA, the matmul path as one (T, T) block, and the matmul
path in modexp's causal query blocks (`attention.query_blocks`), interleaved; ratios to SDPA.

    python benchmarks/bench_attention.py --alone 32,2,128,6 32,2,128,24 8,4,256,64 --repeats 31
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from modexp.bench.timing import Stepper, quartiles, random_batch, time_interleaved  # noqa: E402
from modexp.kernels import attention as A  # noqa: E402
from modexp.models.build import build_model  # noqa: E402
from modexp.spec import load_spec  # noqa: E402
from modexp.training.allocator import tune_cpu_allocator  # noqa: E402


def parse_args() -> argparse.Namespace:
    """Command-line options; shapes come from the spec."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--spec", default="experiments/quickstart.yaml")
    p.add_argument("--models", nargs="*", help="model names to run (default: all)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=41, help="timed step pairs")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--alone", nargs="+", metavar="B,nh,T,hs",
                   help="time attention alone at these shapes instead of whole training steps")
    return p.parse_args()


class Forced:
    """A Stepper whose steps take one attention path (attention.matmul_path patched)."""

    def __init__(self, stepper: Stepper, matmul: bool):
        self.stepper, self.matmul = stepper, matmul

    def step(self) -> float:
        real = A.matmul_path
        A.matmul_path = lambda q: self.matmul and q.requires_grad  # training passes only
        try:
            return self.stepper.step()
        finally:
            A.matmul_path = real


def attention_alone(shape: str, args) -> None:
    """One row: forward + backward of causal attention alone, SDPA vs one block vs modexp's."""
    B, nh, T, hs = (int(x) for x in shape.split(","))
    q, k, v = (torch.randn(B, nh, T, hs, requires_grad=True) for _ in range(3))
    g = torch.randn(B, nh, T, hs)
    blocks = A.query_blocks

    def timed(attend, split=blocks):
        def run() -> float:
            A.query_blocks = split
            try:
                t0 = time.perf_counter()
                attend(q, k, v).backward(g)
                return time.perf_counter() - t0
            finally:
                A.query_blocks = blocks
        return run

    secs = time_interleaved({
        "sdpa": timed(lambda *x: F.scaled_dot_product_attention(*x, is_causal=True)),
        "one": timed(A.matmul_attention, lambda t: [(0, t)]),
        "blocks": timed(A.matmul_attention)}, args.warmup, args.repeats)
    row = f"{shape:<16}{len(blocks(T)):>7}{1e3 * statistics.median(secs['sdpa']):>9.2f}"
    for name in ("one", "blocks"):
        ratios = [a / b for a, b in zip(secs[name], secs["sdpa"])]
        lo, hi = quartiles(ratios)
        row += f"{statistics.median(ratios):>8.3f} ({lo:.3f}-{hi:.3f})"
    print(f"{row}  {'matmul' if A.matmul_path(q) else 'SDPA'}")


def main() -> None:
    """One row per size and variant: SDPA and matmul step ms, ratio, modexp's choice."""
    args = parse_args()
    torch.set_num_threads(args.threads)
    tune_cpu_allocator()  # as `modexp run` does on the CPU
    if args.alone:
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; attention alone, "
              f"forward + backward; median of {args.repeats} after {args.warmup} warm-up")
        print(f"{'B,nh,T,hs':<16}{'blocks':>7}{'SDPA ms':>9}{'one block / SDPA':>24}"
              f"{'query blocks / SDPA':>24}  modexp trains with")
        for shape in args.alone:
            attention_alone(shape, args)
        return
    spec = load_spec(args.spec)
    B, T, vocab = spec.train.batch_size, spec.data.seq_len, spec.data.vocab
    batch = random_batch(vocab, B, T)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {B}, T {T}; "
          f"median of {args.repeats} interleaved pairs after {args.warmup} warm-up")
    print(f"{'size':<7}{'hs':>4} {'variant':<9}{'SDPA ms':>9}{'matmul ms':>11}{'ratio':>8}"
          f"{'quartiles':>14}  modexp trains with")
    for m in spec.models:
        if args.models and m.name not in args.models:
            continue
        hs = m.d_model // m.n_heads
        q = torch.empty(B, m.n_heads, T, hs, requires_grad=True)  # a dense layer's queries
        path = "matmul" if A.matmul_path(q) else "SDPA"
        for vname, variant in spec.variants.items():
            steppers = {}
            for name, matmul in (("sdpa", False), ("matmul", True)):
                torch.manual_seed(0)
                net = build_model(m, variant, vocab, seq_len=T)
                steppers[name] = Forced(Stepper(net, spec.train, batch, "cpu"), matmul).step
            secs = time_interleaved(steppers, args.warmup, args.repeats)
            ratios = [a / b for a, b in zip(secs["matmul"], secs["sdpa"])]
            lo, hi = quartiles(ratios)
            print(f"{m.name:<7}{hs:>4} {vname:<9}{1e3 * statistics.median(secs['sdpa']):>9.2f}"
                  f"{1e3 * statistics.median(secs['matmul']):>11.2f}"
                  f"{statistics.median(ratios):>8.3f}{f'{lo:.3f}-{hi:.3f}':>14}  {path}")


if __name__ == "__main__":
    main()
