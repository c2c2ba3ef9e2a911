"""Batch prefetch on the CPU: the Trainer with train.prefetch on against off, same run.

Two Trainers train the same model (same seed) on the same batches in one process, in
alternating chunks of --chunk steps (interleaved, so load drift hits both), one making each
step's micro-batches itself, the other taking them from the prefetch thread
(training/prefetch.py). ratio = median over chunks of (prefetch chunk / direct chunk);
below 1 the thread helps. What decides train.prefetch's `auto` on the CPU (docs/scaling.md).

    python benchmarks/bench_prefetch.py [--spec experiments/quickstart.yaml] [--model NAME]
"""

from __future__ import annotations

import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_trainer import parse_args, setup  # noqa: E402
from modexp.bench.timing import quartiles  # noqa: E402
from modexp.models.build import build_model  # noqa: E402
from modexp.training.train import Context, Trainer  # noqa: E402


class _Rows:
    def log(self, row: dict) -> None:
        pass


def main() -> None:
    """Alternate prefetch-on and -off chunks; print the median time ratio with quartiles."""
    p = parse_args(__doc__)
    p.add_argument("--micro-batch", type=int, help="train.micro_batch_size (default: the spec's)")
    a = p.parse_args()
    extra = {"micro_batch_size": a.micro_batch} if a.micro_batch else {}
    spec, model, run, data, model_cfg = setup(a, **extra)

    def trainer(prefetch: bool, tmp: str) -> Trainer:
        torch.manual_seed(run.seed)
        net = build_model(model_cfg, spec.variants[run.variant], run.vocab, seq_len=run.seq_len)
        cfg = spec.train.model_copy(update={"checkpoint_every": 10 ** 9, "prefetch": prefetch})
        t = Trainer(net, run, cfg, data, _Rows(), Path(tmp) / f"{prefetch}.pt",
                    Context(torch.device("cpu")))
        t.save = lambda wall: None  # checkpoints are not part of the step
        return t

    def chunk(t: Trainer) -> float:
        t0 = time.perf_counter()
        t.plan = dataclasses.replace(run, steps=t.step + a.chunk)
        t.fit()
        return time.perf_counter() - t0

    with tempfile.TemporaryDirectory() as tmp:
        on, off = trainer(True, tmp), trainer(False, tmp)
        chunk(on), chunk(off)  # warm-up
        t_on, t_off = [], []
        for _ in range(a.repeats):
            t_on.append(chunk(on))
            t_off.append(chunk(off))
    ratio = [x / y for x, y in zip(t_on, t_off)]
    q = quartiles(ratio)
    print(f"$ python {' '.join(sys.argv)}")
    print(f"{spec.name} size {model} {a.variant}: batch {run.batch_size} x {run.seq_len}, "
          f"micro-batch {on.micro}, {torch.get_num_threads()} threads, {a.repeats} chunks of "
          f"{a.chunk} steps")
    print(f"prefetch on {1e3 * statistics.median(t_on) / a.chunk:.1f} ms/step, off "
          f"{1e3 * statistics.median(t_off) / a.chunk:.1f} ms/step; on/off {statistics.median(ratio):.3f} "
          f"(quartiles {q[0]:.3f} to {q[1]:.3f})")


if __name__ == "__main__":
    main()
