"""What a KV-cached generation really holds against memory.py's generation_memory, part by part.

Each case runs in a fresh process (a process's peak resident memory only grows): a warm-up
generation, then one of `new` tokens after a `prompt`-token prompt; the growth of the peak
resident set (ru_maxrss) is set beside the estimate, whose KV cache is exact and whose
bookkeeping (memory.STEP_BOOKKEEPING + ROW_BOOKKEEPING per row and step) is meant to bound
the Python objects the decode loop keeps. `modexp sample` and `modexp bench` refuse
generations whose estimate passes the free memory.

    python benchmarks/bench_generation_memory.py [--new 8000] [--prompt 8]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

ONE = """
import json, resource, sys
sys.path.insert(0, {root!r})
import torch
from modexp import flops as F
from modexp.memory import generation_memory
from modexp.models.decode import generate
from modexp.models.build import build_model
from modexp.spec import ModelConfig, ModVariant, VanillaVariant
kind, batch, prompt, new = {kind!r}, {batch}, {prompt}, {new}
cfg = ModelConfig(name="m", n_layers=2, d_model=32, n_heads=2)
variant = (ModVariant(kind="mod", capacity=0.25) if kind == "mod" else VanillaVariant(kind="vanilla"))
torch.manual_seed(0)
net = build_model(cfg, variant, 256).eval()
ids = torch.randint(0, 256, (batch, prompt))
generate(net, ids[:, :4], 4, 1.0)  # warm-up: allocator, kernels, tables
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
g = generate(net, ids, new, 1.0)
grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
est = generation_memory(F.arch_from_config(cfg, variant, 256), batch, prompt, new)
kv = sum(c.nbytes for c in g.caches)
print(json.dumps({{"grown": grown, "kv": kv, "estimate": est.total, "kv_estimate": est.kv_cache,
                  "beyond_kv_per_step": (grown - kv) / new,
                  "bookkeeping_per_step": est.bookkeeping / new}}))
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--new", type=int, default=8000, help="tokens generated per case")
    p.add_argument("--prompt", type=int, default=8)
    a = p.parse_args()
    print(f"{'case':<12} {'RSS growth':>11} {'estimate':>10} {'ratio':>6} {'KV real':>9} "
          f"{'KV est':>9} {'beyond KV/step':>15} {'bookkeeping/step':>17}")
    for kind in ("vanilla", "mod"):
        for batch in (1, 8):
            code = ONE.format(root=str(ROOT), kind=kind, batch=batch, prompt=a.prompt, new=a.new)
            r = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True,
                                          text=True, check=True).stdout)
            print(f"{kind + ' b' + str(batch):<12} {r['grown'] / 2**20:>9.1f}Mi "
                  f"{r['estimate'] / 2**20:>8.1f}Mi {r['estimate'] / max(r['grown'], 1):>6.2f} "
                  f"{r['kv'] / 2**20:>7.2f}Mi {r['kv_estimate'] / 2**20:>7.2f}Mi "
                  f"{r['beyond_kv_per_step']:>13.0f} B {r['bookkeeping_per_step']:>15.0f} B")


if __name__ == "__main__":
    main()
