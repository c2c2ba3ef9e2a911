"""Decode and training speed of MoD vs vanilla against their FLOP ratios: the README's figures.

Defaults: experiments/quickstart.yaml's largest size, MoD at capacity 12.5% on every other
block (the paper's best setting), batch-1 and batch-8 KV-cached decoding of 128 new tokens
after a 16-token prompt, and the training step at the spec's batch. A spec benchmarks freshly
initialised models (predictor biases set so 12.5% of tokens route); a results or run folder
benchmarks its trained checkpoints. Targets (issue 6): batch-1 decode >= 1.5x faster for MoD,
and every measured speedup >= 0.9 of its analytic FLOP speedup.

    python benchmarks/bench_decode.py [TARGET] [--repeats 15] [--threads 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.console import Console

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from modexp.bench import bench, print_bench, report_dict  # noqa: E402
from modexp.spec import load_spec  # noqa: E402


def parse_args() -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("target", nargs="?", default="experiments/quickstart.yaml",
                   help="spec (fresh models), results folder or run folder (checkpoints)")
    p.add_argument("--model", help="model size (default: the largest)")
    p.add_argument("--capacity", type=float, default=0.125, help="spec targets: MoD capacity")
    p.add_argument("--route-every", type=int, default=2,
                   help="spec targets: route every n-th block")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    p.add_argument("--prompt-len", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=15, help="decode runs per model and batch size")
    p.add_argument("--train-repeats", type=int, default=10, help="training steps per model")
    p.add_argument("--no-train", action="store_true", help="skip the training-step benchmark")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", help="also write the report here as JSON")
    return p.parse_args()


def target_of(args: argparse.Namespace):
    """A spec file becomes its spec with the MoD variant at --capacity / --route-every."""
    path = Path(args.target)
    if not path.is_file():
        return args.target
    spec = load_spec(path)
    variants = {n: v.model_copy(update={"capacity": args.capacity, "route_every": args.route_every,
                                        "layers": None}) if v.kind == "mod" else v
                for n, v in spec.variants.items()}
    return spec.model_copy(update={"variants": variants})


def check(report, console: Console) -> None:
    """The issue's targets, each with its measured number."""
    for r in report.ratios:
        ok = r.realisation >= 0.9
        console.print(f"{'PASS' if ok else 'MISS'}  {r.what}: speedup {r.measured:.2f}x of an "
                      f"analytic {r.analytic:.2f}x, realisation {r.realisation:.2f} "
                      "(target >= 0.90)")
        if r.what == "decode b1":
            ok = r.measured >= 1.5
            console.print(f"{'PASS' if ok else 'MISS'}  decode b1: MoD {r.measured:.2f}x faster "
                          "than vanilla (target >= 1.50x)")


def main() -> None:
    """Run the benchmark, print the tables and the target checks."""
    args = parse_args()
    console = Console(width=None if sys.stdout.isatty() else 200)
    report = bench(target_of(args), args.model, tuple(args.batch_sizes), args.prompt_len,
                   args.new_tokens, args.warmup, args.repeats, not args.no_train,
                   train_repeats=args.train_repeats, device=args.device, threads=args.threads)
    report.target = args.target
    console.print(f"$ python {' '.join(sys.argv)}", highlight=False)
    print_bench(report, console)
    check(report, console)
    if args.json:
        Path(args.json).write_text(json.dumps(report_dict(report), indent=2))


if __name__ == "__main__":
    main()
