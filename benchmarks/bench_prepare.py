"""`modexp prepare`'s encoders side by side, and its throughput and peak RSS at two corpus sizes.

Encoders (always): a byte-level BPE (--vocab) trained by modexp on the stdlib's source is
applied to the same corpus batches by the tokenizers library and by tiktoken built from that
BPE (modexp/data/encoders.py), alternately, --rounds times, in this one process; each is
timed in CPU seconds (time.process_time: all threads), so the figure is MB of UTF-8 text per
CPU-second whatever the core count, and every batch's ids are compared. The batches are those
prepare encodes (64 Ki-character pieces, ~1 Mi characters a batch).

Whole prepare (--prepare): the corpus is the stdlib's Python source (modexp.data.corpus.stdlib_files) copied over and over into
a temporary folder until it reaches each size. Each prepare runs in its own child process so
its peak RSS (ru_maxrss from wait4) is its own; the memory bound shows as an RSS that stays
flat while the corpus grows 10x. Tokenizers: a byte-level BPE trained by `prepare` itself on
the small corpus (bpe:VOCAB: training + encoding), then that tokenizer.json at both sizes
(encoding only), and raw bytes at both sizes.

    python benchmarks/bench_prepare.py [--mb 16] [--rounds 3] [--vocab 8192]
    python benchmarks/bench_prepare.py --prepare [--sizes-mb 20 200] [--vocab 8192]
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


def encoder_table(mb: float, vocab: int, rounds: int) -> None:
    """MB per CPU-second of tokenizers and tiktoken on the same batches, alternating."""
    from modexp.data.documents import scan_inputs
    from modexp.data.encoders import TokenizersEncoder, pick_encoder, tiktoken_encoding
    from modexp.data.prepare import _batches, documents, separator, tokenizer_vocab, train_bpe

    with tempfile.TemporaryDirectory() as tmp:
        make_corpus(Path(tmp), mb)
        inputs = scan_inputs([tmp])
        batches = [b[0] for b in _batches(documents(inputs, "text"), 0.01)]
    tok = train_bpe((t for b in batches[: max(1, len(batches) // 4)] for t in b), vocab)
    sep, v = separator(tok), tokenizer_vocab(tok)
    hf = TokenizersEncoder(tok, sep, v)
    picked, why = pick_encoder(tok, sep, v)
    tt = tiktoken_encoding(tok)
    size = sum(len(t.encode("utf-8")) for b in batches for t in b) / 1e6
    cpu = {"tokenizers": 0.0, "tiktoken": 0.0}
    differ = 0
    for _ in range(rounds):
        for b in batches:  # one batch by each, in turn: both see the same machine load
            t0 = time.process_time()
            a = hf.encode(b)
            t1 = time.process_time()
            c = tt.encode_ordinary_batch(b)
            t2 = time.process_time()
            cpu["tokenizers"] += t1 - t0
            cpu["tiktoken"] += t2 - t1
            differ += sum(list(x) != y for x, y in zip(a, c))
    print(f"corpus: {size:.1f} MB of the stdlib's source, {len(batches)} batches, BPE vocab {v:,}, "
          f"{rounds} rounds; modexp prepare picks: {picked.name}" + (f" ({why})" if why else ""))
    print(f"{'encoder':<12}{'CPU s':>8}{'MB/CPU-s':>10}{'vs tokenizers':>15}")
    for name, t in cpu.items():
        print(f"{name:<12}{t:>8.2f}{size * rounds / t:>10.2f}{cpu['tokenizers'] / t:>15.2f}")
    print(f"pieces whose ids differ: {differ} of {rounds * sum(map(len, batches))}")


def timed_prepare(inputs: list[str], out: Path, tokenizer: str, encoder: str = "auto") -> tuple[float, float]:
    """(seconds, peak RSS in MB) of `python -m modexp prepare` in a child process."""
    cmd = [sys.executable, "-m", "modexp", "prepare", *inputs, "--out", str(out),
           "--tokenizer", tokenizer, "--encoder", encoder, "-q"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, env=env)
    _, status, usage = os.wait4(p.pid, 0)
    seconds = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"prepare failed: {' '.join(cmd)}")
    return seconds, usage.ru_maxrss / 1024  # Linux: KiB


def prepare_table(sizes_mb: list[float], vocab: int) -> None:
    """Whole `modexp prepare` runs, each in its own process: seconds, MB/s and peak RSS."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sizes = {}
        for mb in sizes_mb:
            sizes[mb] = make_corpus(tmp / f"corpus{mb:g}", mb)
        small = min(sizes_mb)
        rows = []
        t, rss = timed_prepare([str(tmp / f"corpus{small:g}")], tmp / "bpe", f"bpe:{vocab}")
        rows.append((f"bpe:{vocab} (train + encode)", sizes[small], t, rss))
        for name, tok, enc in (("tokenizer.json, tokenizers", str(tmp / "bpe" / "tokenizer.json"), "tokenizers"),
                               ("tokenizer.json, auto", str(tmp / "bpe" / "tokenizer.json"), "auto"),
                               ("bytes", "bytes", "auto")):
            for mb in sizes_mb:
                out = tmp / f"out-{mb:g}"
                t, rss = timed_prepare([str(tmp / f"corpus{mb:g}")], out, tok, enc)
                rows.append((name, sizes[mb], t, rss))
                shutil.rmtree(out)
    print(f"cpus: {os.cpu_count()} (shared machine: absolute speeds are noisy)")
    print(f"{'tokenizer':<30}{'input MB':>10}{'seconds':>10}{'MB/s':>8}{'peak RSS MB':>13}")
    for name, size, t, rss in rows:
        print(f"{name:<30}{size / 1e6:>10.1f}{t:>10.1f}{size / 1e6 / t:>8.2f}{rss:>13.0f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=16, help="corpus size of the encoder table")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--prepare", action="store_true", help="also time whole prepare runs")
    ap.add_argument("--sizes-mb", type=float, nargs=2, default=[20, 200])
    args = ap.parse_args()
    encoder_table(args.mb, args.vocab, args.rounds)
    if args.prepare:
        prepare_table(args.sizes_mb, args.vocab)


if __name__ == "__main__":
    main()
