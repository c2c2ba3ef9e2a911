"""The Trainer's per-step overhead: its loop against a bare loop over the same model and batches.

Both train the same model (same seed, the same AdamWs: make_optimizers) on the same batches in
one process, in alternating chunks of --chunk steps (interleaved, so load drift hits both):
- Trainer: Trainer.fit over the chunk, i.e. data loading, forward, backward, grad clipping,
  AdamW, the LR schedule, the finite-loss check, and a logged train row every log_every
  steps (the spec's cadence). Evaluations and checkpoint writes are left out here: their cost
  is a share of the run's wall time, reported as eval_share in summary.json;
- bare: forward, backward, AdamW on prefetched batches, nothing else.
overhead = median over chunks of (Trainer chunk / bare chunk) - 1; target (issue 15) <= 5%.

    python benchmarks/bench_trainer.py [--spec experiments/quickstart.yaml] [--model NAME]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from modexp.bench.timing import quartiles  # noqa: E402
from modexp.data.tokens import TokenData  # noqa: E402
from modexp.models.build import build_model  # noqa: E402
from modexp.plan import plan_spec  # noqa: E402
from modexp.spec import load_spec  # noqa: E402
from modexp.training.allocator import tune_cpu_allocator  # noqa: E402
from modexp.training.optim import make_optimizers  # noqa: E402
from modexp.training.train import Context, Trainer  # noqa: E402


class _Rows:
    """A logger that keeps rows in memory (the trainer formats them; nothing is written)."""

    def __init__(self):
        self.rows = []

    def log(self, row: dict) -> None:
        self.rows.append(row)


def parse_args(doc: str = __doc__) -> argparse.ArgumentParser:
    """Command-line options (benchmarks/bench_prefetch.py adds its own)."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--spec", default="experiments/quickstart.yaml")
    p.add_argument("--model", help="model size (default: the largest)")
    p.add_argument("--variant", default="vanilla")
    p.add_argument("--chunk", type=int, default=10, help="steps per timed chunk")
    p.add_argument("--repeats", type=int, default=7, help="timed chunks per loop")
    p.add_argument("--threads", type=int, default=2)
    return p


def setup(a: argparse.Namespace, **plan):
    """Threads and allocator as `modexp run` sets them on the CPU; the spec, the size, its run
    (a horizon of exactly the timed steps; `plan`: other plan fields), the data, the model config."""
    torch.set_num_threads(a.threads)
    tune_cpu_allocator()  # as `modexp run` does on the CPU (training/allocator.py)
    spec = load_spec(a.spec)
    model = a.model or spec.models[-1].name
    run = next(r for r in plan_spec(spec).runs if r.model == model and r.variant == a.variant)
    n = a.chunk * (a.repeats + 1)
    run = dataclasses.replace(run, steps=n, eval_steps=[], **plan)
    data = TokenData(spec.data.source, spec.data.seq_len, spec.data.val_fraction)
    return spec, model, run, data, next(m for m in spec.models if m.name == model)


def main() -> None:
    """Alternate Trainer and bare chunks; print the median overhead with quartiles."""
    a = parse_args().parse_args()
    spec, model, run, data, model_cfg = setup(a)
    n = run.steps
    cfg = spec.train.model_copy(update={"checkpoint_every": 10 ** 9})

    def net():
        torch.manual_seed(run.seed)
        return build_model(model_cfg, spec.variants[run.variant], run.vocab, seq_len=run.seq_len)

    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(net(), run, cfg, data, _Rows(), Path(tmp) / "ckpt.pt",
                          Context(torch.device("cpu")))
        trainer.save = lambda wall: None  # checkpoints are not part of the step
        bare = net().train()
        opts = make_optimizers(bare, cfg, torch.device("cpu"))  # the predictors' too, as trained
        batches = [data.train_batch(run.seed, s, run.batch_size) for s in range(n)]

        def trainer_chunk() -> float:
            t0 = time.perf_counter()
            trainer.plan = dataclasses.replace(run, steps=trainer.step + a.chunk)
            trainer.fit()
            return time.perf_counter() - t0

        def bare_chunk(start: int) -> float:
            t0 = time.perf_counter()
            for x, y in batches[start:start + a.chunk]:
                bare(x, y).loss.backward()
                for opt in opts:
                    opt.step()
                    opt.zero_grad(set_to_none=True)
            return time.perf_counter() - t0

        trainer_chunk(), bare_chunk(0)  # warm-up
        t, b = [], []
        for i in range(1, a.repeats + 1):
            t.append(trainer_chunk())
            b.append(bare_chunk(i * a.chunk))
    ratio = [x / y for x, y in zip(t, b)]
    over, q = statistics.median(ratio) - 1, quartiles(ratio)
    print(f"$ python {' '.join(sys.argv)}")
    print(f"{spec.name} size {model} {a.variant}: batch {run.batch_size} x {run.seq_len}, "
          f"{torch.get_num_threads()} threads, {a.repeats} chunks of {a.chunk} steps "
          f"(log_every {cfg.log_every})")
    print(f"Trainer {1e3 * statistics.median(t) / a.chunk:.1f} ms/step, bare "
          f"{1e3 * statistics.median(b) / a.chunk:.1f} ms/step; overhead {over:+.1%} "
          f"(quartiles {q[0] - 1:+.1%} to {q[1] - 1:+.1%})")
    print(f"{'PASS' if over <= 0.05 else 'MISS'}  Trainer overhead {over:+.1%} (target <= 5%)")


if __name__ == "__main__":
    main()
