"""Causal decision rules side by side on trained MoD checkpoints: one global threshold
(`threshold: calibrated`) against per-position thresholds from the prefix (`threshold:
prefix`, modexp/models/decision.py) at a few prior weights.

Decisions do not change training, so each rule is scored on the same weights: the causal
pass over the run's final-evaluation sequences (the same windows, the same calibrated global
threshold from the checkpoint), against top-k membership. Prints per run and rule the routed
fraction, accuracy with its 95% interval over sequences, precision, recall and the causal
loss against top-k.

    python benchmarks/decision_rules.py results/quickstart [--priors 0 16 64]
"""

from __future__ import annotations

import argparse
import sys
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from modexp.data.tokens import TokenData  # noqa: E402
from modexp.runs.sample import load_run  # noqa: E402
from modexp.spec import parse_spec  # noqa: E402
from modexp.training.evaluation import eval_pass  # noqa: E402


def score(model, batches, prior: int | None) -> dict:
    """Top-k and causal passes with every routed layer deciding by the given rule."""
    for decision in model.decisions():
        decision.set_prefix_prior(prior)
    top = eval_pass(model, batches, "topk", torch.device("cpu"), nullcontext)
    causal = eval_pass(model, batches, "causal", torch.device("cpu"), nullcontext)
    return {"routed": causal["routed_frac"], "acc": causal["predictor_acc"],
            "ci": causal["predictor_acc_ci"], "prec": causal["predictor_precision"],
            "rec": causal["predictor_recall"], "gap": causal["eval_loss"] / top["eval_loss"] - 1}


def main() -> None:
    """Score each MoD run of an experiment folder under each rule."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("experiment", type=Path)
    p.add_argument("--priors", type=int, nargs="+", default=[16])
    a = p.parse_args()
    torch.set_num_threads(2)
    print(f"$ python {' '.join(sys.argv)}")
    print(f"{'run':<22}{'rule':<12}{'routed':>8}  {'acc [95%]':<24}{'prec':>6}{'rec':>6}{'causal-topk':>12}")
    for run_dir in sorted(d for d in a.experiment.iterdir() if (d / "summary.json").exists()):
        model, run, _ = load_run(run_dir)
        if not model.decisions():
            continue  # vanilla, or random routing: no learned decision
        spec, train = parse_spec(run["spec"], str(run_dir)), run["spec"]["train"]
        data = TokenData(spec.data.source, spec.data.seq_len, spec.data.val_fraction,
                         run["plan"]["vocab"])
        batches = data.val_batches(train["eval_batches"], run["plan"]["batch_size"],
                                   train["final_eval_batches"] // train["eval_batches"])
        with torch.no_grad():
            for prior in (None, *a.priors):
                s = score(model.eval(), batches, prior)
                rule = "calibrated" if prior is None else f"prefix {prior}"
                routed = " ".join(f"{f:.1%}" for f in s["routed"])
                print(f"{run_dir.name:<22}{rule:<12}{routed:>8}  {s['acc']:.3f} "
                      f"[{s['ci'][0]:.3f}, {s['ci'][1]:.3f}]  {s['prec']:>6.3f}{s['rec']:>6.3f}"
                      f"{s['gap']:>+11.2%}")


if __name__ == "__main__":
    main()
