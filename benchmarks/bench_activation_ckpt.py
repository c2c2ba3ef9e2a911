"""Memory of one training step with and without activation checkpointing, side by side.

Each configuration (vanilla and MoD, checkpointing off and on) runs in a fresh process,
which builds the model, notes its resident memory, runs one training step (forward,
backward, AdamW step) and reports the growth of its peak RSS over that point (the OS's
high-water mark, hence one process per configuration): activations, gradients and the
optimiser's state, of which only the activations differ. Printed: off, on, and the ratio
on / off. Plain CPU PyTorch, float32; no assert: a reading.

    python benchmarks/bench_activation_ckpt.py [--layers 8] [--d-model 256] [--seq-len 512] [--batch 8]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--one", help=argparse.SUPPRESS)  # "<variant>,<0|1>": measure one, print JSON
    return p.parse_args(argv)


def rss_bytes() -> int:
    """This process's resident memory now (Linux /proc)."""
    import os

    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(args, variant: str, checkpointed: bool) -> dict:
    """One training step of a fresh model: {"rss_growth": bytes}."""
    import torch

    from modexp.models.build import build_model
    from modexp.spec import ModelConfig, ModVariant, TrainConfig, VanillaVariant
    from modexp.training.optim import make_optimizers
    from modexp.training.parallel import checkpoint_blocks

    torch.manual_seed(0)
    cfg = ModelConfig(name="b", n_layers=args.layers, d_model=args.d_model, n_heads=args.heads)
    var = VanillaVariant(kind="vanilla") if variant == "vanilla" else \
        ModVariant(kind="mod", capacity=0.125, causal="predictor")
    net = build_model(cfg, var, args.vocab, seq_len=args.seq_len, device="cpu")
    if checkpointed:
        checkpoint_blocks(net)
    opts = make_optimizers(net, TrainConfig(), torch.device("cpu"))
    x = torch.randint(0, args.vocab, (args.batch, args.seq_len + 1), generator=torch.Generator().manual_seed(0))
    before = rss_bytes()
    out = net(x[:, :-1], x[:, 1:])
    out.loss.backward()
    for opt in opts:
        opt.step()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"rss_growth": peak - before}


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.one:
        variant, on = args.one.split(",")
        print(json.dumps(measure(args, variant, on == "1")))
        return 0
    passed = list(argv if argv is not None else sys.argv[1:])
    print(f"{args.layers} layers, d_model {args.d_model}, seq {args.seq_len}, batch {args.batch}, float32 CPU")
    print(f"{'variant':8} {'peak RSS growth, off':>21} {'on':>9} {'on/off':>7}")
    for variant in ("vanilla", "mod"):
        off, on = (json.loads(subprocess.run([sys.executable, __file__, *passed, "--one", f"{variant},{on}"],
                                             check=True, capture_output=True, text=True).stdout)["rss_growth"]
                   / 2**20 for on in (0, 1))
        print(f"{variant:8} {off:17.1f} MiB {on:5.1f} MiB {on / off:7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
