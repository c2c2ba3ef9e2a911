"""`modexp prepare` throughput (MB of text per second) and peak RSS at two corpus sizes.

The corpus is the stdlib's Python source (modexp.data.corpus.stdlib_files) copied over and over into
a temporary folder until it reaches each size. Each prepare runs in its own child process so
its peak RSS (ru_maxrss from wait4) is its own; the memory bound shows as an RSS that stays
flat while the corpus grows 10x. Tokenizers: a byte-level BPE trained by `prepare` itself on
the small corpus (bpe:VOCAB: training + encoding), then that tokenizer.json at both sizes
(encoding only), and raw bytes at both sizes.

    python benchmarks/bench_prepare.py [--sizes-mb 20 200] [--vocab 8192]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout

from modexp.data.corpus import stdlib_files  # noqa: E402


def make_corpus(folder: Path, mb: float) -> int:
    """Copies of the stdlib source under folder/copyK/ until `mb` MB; the bytes written."""
    files, total, k = stdlib_files(), 0, 0
    while total < mb * 1e6:
        for f in files:
            dst = folder / f"copy{k:03d}" / f.name
            dst.parent.mkdir(parents=True, exist_ok=True)
            if dst.exists():
                dst = dst.with_name(f"{hash(str(f)) & 0xffffff:06x}_{f.name}")
            shutil.copyfile(f, dst)
            total += dst.stat().st_size
            if total >= mb * 1e6:
                break
        k += 1
    return total


def timed_prepare(inputs: list[str], out: Path, tokenizer: str) -> tuple[float, float]:
    """(seconds, peak RSS in MB) of `python -m modexp prepare` in a child process."""
    cmd = [sys.executable, "-m", "modexp", "prepare", *inputs, "--out", str(out),
           "--tokenizer", tokenizer, "-q"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, env=env)
    _, status, usage = os.wait4(p.pid, 0)
    seconds = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"prepare failed: {' '.join(cmd)}")
    return seconds, usage.ru_maxrss / 1024  # Linux: KiB


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes-mb", type=float, nargs=2, default=[20, 200])
    ap.add_argument("--vocab", type=int, default=8192)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sizes = {}
        for mb in args.sizes_mb:
            sizes[mb] = make_corpus(tmp / f"corpus{mb:g}", mb)
        small = min(args.sizes_mb)
        rows = []
        t, rss = timed_prepare([str(tmp / f"corpus{small:g}")], tmp / "bpe", f"bpe:{args.vocab}")
        rows.append((f"bpe:{args.vocab} (train + encode)", sizes[small], t, rss))
        for name, tok in (("tokenizer.json (encode)", str(tmp / "bpe" / "tokenizer.json")),
                          ("bytes", "bytes")):
            for mb in args.sizes_mb:
                out = tmp / f"out-{mb:g}-{name.split()[0]}"
                t, rss = timed_prepare([str(tmp / f"corpus{mb:g}")], out, tok)
                rows.append((name, sizes[mb], t, rss))
                shutil.rmtree(out)
    print(f"cpus: {os.cpu_count()} (shared machine: absolute speeds are noisy)")
    print(f"{'tokenizer':<28}{'input MB':>10}{'seconds':>10}{'MB/s':>8}{'peak RSS MB':>13}")
    for name, size, t, rss in rows:
        print(f"{name:<28}{size / 1e6:>10.1f}{t:>10.1f}{size / 1e6 / t:>8.2f}{rss:>13.0f}")


if __name__ == "__main__":
    main()
