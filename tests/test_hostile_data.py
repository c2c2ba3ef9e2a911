"""Hostile inputs to the data stage (issue 27 points 3-4, issue 26 points 2 and 6): every probe is
a setup on disk, one command through the real CLI, the exit code, the one line it must print,
and what must be on disk afterwards. Exit 0 with the right result, or exit 2 with one line
naming the file, field or flag; never a traceback, a hang or debris.

`python tests/test_hostile_data.py [--root CHECKOUT]` runs every probe as a subprocess against
the modexp importable from CHECKOUT (default: this one) and prints the table of exit codes,
lines and disk states (the before/after table of the data stage's report).
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCS = [f"document {i}: the quick brown fox jumps over the lazy dog, {i * 7} times.\n" * 3
        for i in range(300)]
TINY = {"name": "h", "seeds": [0], "budgets": [2e7],
        "models": [{"name": "xs", "n_layers": 2, "d_model": 16, "n_heads": 2}],
        "variants": {"vanilla": {"kind": "vanilla"}},
        "train": {"batch_size": 2, "eval_points": 1, "eval_batches": 1, "log_every": 5,
                  "checkpoint_every": 50}}


@dataclass
class Probe:
    """One hostile input: setup(tmp) -> the CLI arguments; the exit code and a line it must
    print; after(tmp) asserts what is on disk."""

    name: str
    setup: Callable[[Path], list[str]]
    code: int
    line: str
    after: Callable[[Path], None] | None = None
    slow: bool = False  # trains a run in its setup
    own_process: bool = False  # must run as a subprocess (hangs, signals)
    one_problem: bool = True  # exit 2 with exactly one problem line (a refused results folder
    # adds the ways out as a second line)
    needs: tuple[str, ...] = ()  # optional modules


# ---------------------------------------------------------------- setups


def _docs_jsonl(path: Path, n: int = 300) -> Path:
    with open(path, "w") as f:
        for d in DOCS[:n]:
            f.write(json.dumps({"text": d}) + "\n")
    return path


def _text_folder(tmp: Path, name: str = "corpus") -> Path:
    folder = tmp / name
    folder.mkdir()
    for i in range(0, 300, 30):
        (folder / f"f{i:03d}.txt").write_text("".join(DOCS[i:i + 30]))
    return folder


def _spec(tmp: Path, data: dict, name: str = "spec.yaml", **over) -> Path:
    path = tmp / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({**TINY, "data": {"seq_len": 16, **data}, **over}, sort_keys=False))
    return path


CODE_ROOT: Path | None = None  # the table's checkout: setups run its modexp, as the probe does


def _modexp(tmp: Path, *args) -> None:
    """A setup step through the CLI: in this process, or the table's checkout in a subprocess."""
    if CODE_ROOT is not None:
        code, out = _subprocess([str(a) for a in args], Path.cwd(), CODE_ROOT, timeout=300)
        assert code == 0, out
        return
    from typer.testing import CliRunner

    from modexp.cli import app

    r = CliRunner().invoke(app, [str(a) for a in args])
    assert r.exit_code == 0, r.output


def _bpe_folder(tmp: Path, name: str = "tok") -> Path:
    _modexp(tmp, "prepare", _docs_jsonl(tmp / f"{name}.jsonl"), "--out", tmp / name,
            "--tokenizer", "bpe:300", "--val-fraction", "0.1", "-q")
    return tmp / name


def _shards_with_tokenizer(tmp: Path) -> Path:
    """A shard folder (no meta.json) with a tokenizer.json beside train.bin and val.bin."""
    tok = _bpe_folder(tmp, "src")
    folder = tmp / "shards"
    folder.mkdir()
    for f in ("train.bin", "val.bin", "tokenizer.json"):
        shutil.copy(tok / f, folder / f)
    return folder


def _train(tmp: Path, spec: Path) -> None:
    _modexp(tmp, "run", spec, "--results", tmp / "res", "-q", "--device", "cpu")


def setup_sparse_tokenizer(tmp):
    """A tokenizer.json that declares ~285 tokens but holds an id of 70000."""
    tok = _bpe_folder(tmp)
    cfg = json.loads((tok / "tokenizer.json").read_text())
    vocab = cfg["model"]["vocab"]
    word = "Ġquick"  # a frequent token moved to id 70000: uint16 would wrap it to 4464
    vocab[word] = 70000
    (tmp / "sparse.json").write_text(json.dumps(cfg))
    return ["prepare", str(_docs_jsonl(tmp / "d.jsonl")), "--out", str(tmp / "o"),
            "--tokenizer", str(tmp / "sparse.json"), "--val-fraction", "0.1"]


def after_sparse_tokenizer(tmp):
    meta = json.loads((tmp / "o" / "meta.json").read_text())
    assert meta["dtype"] == "uint32" and meta["vocab_size"] == 70001
    ids = np.fromfile(tmp / "o" / "train.bin", dtype=np.uint32)
    assert (ids == 70000).any() and ids.max() == 70000


def setup_gz_truncated(tmp):
    data = gzip.compress("".join(json.dumps({"text": d}) + "\n" for d in DOCS).encode())
    (tmp / "docs.jsonl.gz").write_bytes(data[: len(data) // 2])
    return ["prepare", str(tmp / "docs.jsonl.gz"), "--out", str(tmp / "o")]


def setup_gz_not_gzip(tmp):
    (tmp / "docs.jsonl.gz").write_bytes(b'{"text": "not compressed"}\n' * 10)
    return ["prepare", str(tmp / "docs.jsonl.gz"), "--out", str(tmp / "o")]


def setup_gz_corrupt(tmp):
    data = bytearray(gzip.compress("".join(json.dumps({"text": d}) + "\n" for d in DOCS).encode()))
    data[12:20] = b"\xff" * 8  # the first deflate block's code lengths
    (tmp / "docs.jsonl.gz").write_bytes(bytes(data))
    return ["prepare", str(tmp / "docs.jsonl.gz"), "--out", str(tmp / "o")]


def setup_json_bad_line(tmp):
    (tmp / "d.jsonl").write_text('{"text": "fine"}\n{"text": "cut\n')
    return ["prepare", str(tmp / "d.jsonl"), "--out", str(tmp / "o")]


def setup_lone_surrogate(tmp):
    (tmp / "d.jsonl").write_text('{"text": "fine"}\n{"text": "a \\ud800 b"}\n')
    return ["prepare", str(tmp / "d.jsonl"), "--out", str(tmp / "o")]


def _parquet(tmp, column):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": column}), tmp / "t.parquet")
    return ["prepare", str(tmp / "t.parquet"), "--out", str(tmp / "o")]


def setup_parquet_ints(tmp):
    return _parquet(tmp, list(range(100)))


def setup_parquet_lists(tmp):
    return _parquet(tmp, [["a", "b"]] * 100)


def setup_parquet_binary(tmp):
    import pyarrow as pa

    return _parquet(tmp, pa.array([b"\x00\x01bytes"] * 100, type=pa.binary()))


def setup_unreadable(tmp):
    folder = _text_folder(tmp)
    (folder / "f000.txt").chmod(0)
    return ["prepare", str(folder), "--out", str(tmp / "o")]


def setup_garbage_tokenizer(tmp):
    (tmp / "tokenizer.json").write_text("this is not json")
    return ["prepare", str(_docs_jsonl(tmp / "d.jsonl")), "--out", str(tmp / "o"),
            "--tokenizer", str(tmp / "tokenizer.json")]


def setup_fifo_in_folder(tmp):
    folder = _text_folder(tmp)
    os.mkfifo(folder / "pipe.txt")
    return ["prepare", str(folder), "--out", str(tmp / "o"), "--val-fraction", "0.1"]


def setup_fifo_as_input(tmp):
    os.mkfifo(tmp / "pipe.jsonl")
    return ["prepare", str(tmp / "pipe.jsonl"), "--out", str(tmp / "o")]


def setup_stale_tmp(tmp):
    stale = tmp / "o.tmp-killed1"
    stale.mkdir()
    (stale / "train.bin").write_bytes(b"\0" * 4096)
    old = time.time() - 3600
    os.utime(stale, (old, old))
    return ["prepare", str(_text_folder(tmp)), "--out", str(tmp / "o"), "--val-fraction", "0.1"]


def after_stale_tmp(tmp):
    assert (tmp / "o" / "meta.json").is_file() and not (tmp / "o.tmp-killed1").exists()


_HELD: list[int] = []  # fds of flocks this process holds for a probe (a "live prepare")


def setup_live_tmp(tmp):
    """A temp folder another (live) prepare holds its flock on: left alone."""
    import fcntl

    live = tmp / "o.tmp-live1"
    live.mkdir()
    old = time.time() - 3600
    os.utime(live, (old, old))
    fd = os.open(live, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # a lock of its own open file: prepare's conflicts with it
    _HELD.append(fd)
    return ["prepare", str(_text_folder(tmp)), "--out", str(tmp / "o"), "--val-fraction", "0.1"]


def after_live_tmp(tmp):
    while _HELD:
        os.close(_HELD.pop())
    assert (tmp / "o" / "meta.json").is_file() and (tmp / "o.tmp-live1").is_dir()


def setup_parents_on_failure(tmp):
    (tmp / "one.txt").write_text("tiny")
    return ["prepare", str(tmp / "one.txt"), "--out", str(tmp / "a" / "b" / "c" / "tok")]


def setup_out_inside_input(tmp):
    return ["prepare", str(_text_folder(tmp)), "--out", str(tmp / "corpus" / "tok"),
            "--val-fraction", "0.1"]


def setup_literal_eot(tmp):
    with open(tmp / "d.jsonl", "w") as f:
        for d in DOCS[:200]:
            f.write(json.dumps({"text": d + "a literal <|endoftext|> in the middle\n" + d}) + "\n")
    return ["prepare", str(tmp / "d.jsonl"), "--out", str(tmp / "o"), "--tokenizer", "bpe:300",
            "--val-fraction", "0.1"]


def after_literal_eot(tmp):
    meta = json.loads((tmp / "o" / "meta.json").read_text())
    ids = np.concatenate([np.fromfile(tmp / "o" / f, dtype=np.uint16) for f in ("train.bin", "val.bin")])
    assert meta["documents"] == 200 and int((ids == meta["separator"]).sum()) == 200


def _no_output(tmp):
    assert not [p.name for p in tmp.iterdir() if p.name.startswith("o")], list(tmp.iterdir())


def _nothing_under_a(tmp):
    assert not (tmp / "a").exists()


def _no_tok_in_corpus(tmp):
    assert not [p for p in (tmp / "corpus").iterdir() if p.name.startswith("tok")]


# ---------------------------------------------------------------- token folders


def setup_partial_train_bin(tmp):
    tok = _bpe_folder(tmp)
    data = (tok / "train.bin").read_bytes()
    (tok / "train.bin").write_bytes(data[: (len(data) // 2) & ~1])  # even length: whole tokens
    return ["run", str(_spec(tmp, {"source": str(tok)})), "--results", str(tmp / "res")]


def setup_sha_differs(tmp):
    tok = _bpe_folder(tmp)
    ids = np.fromfile(tok / "train.bin", dtype=np.uint16)
    ids[10:20] = ids[20:30]  # same size, valid ids, other content
    ids.tofile(tok / "train.bin")
    return ["run", str(_spec(tmp, {"source": str(tok)})), "--results", str(tmp / "res")]


def setup_counts_differ(tmp):
    tok = _bpe_folder(tmp)
    meta = json.loads((tok / "meta.json").read_text())
    meta["val_tokens"] += 1
    (tok / "meta.json").write_text(json.dumps(meta))
    return ["run", str(_spec(tmp, {"source": str(tok)})), "--results", str(tmp / "res")]


def setup_tokenizer_swapped_in_folder(tmp):
    tok = _bpe_folder(tmp)
    other = _bpe_folder(tmp, "other")
    shutil.copy(other / "tokenizer.json", tok / "tokenizer.json")
    cfg = json.loads((tok / "tokenizer.json").read_text())
    cfg["model"]["vocab"]["Ġzz"] = cfg["model"]["vocab"].pop("Ġthe", 299)  # a different file
    (tok / "tokenizer.json").write_text(json.dumps(cfg))
    return ["run", str(_spec(tmp, {"source": str(tok)})), "--results", str(tmp / "res")]


def setup_llmc_short(tmp):
    header = np.zeros(256, np.int32)
    header[:3] = [20240520, 1, 5000]
    with open(tmp / "shard_train.bin", "wb") as f:
        f.write(header.tobytes() + np.arange(3000, dtype=np.uint16).tobytes())
    return ["run", str(_spec(tmp, {"source": str(tmp / "shard_train.bin"), "vocab_size": 5000})),
            "--results", str(tmp / "res")]


def _no_results(tmp):
    assert not (tmp / "res").exists()


def setup_edit_restoring_mtime(tmp):
    corpus = tmp / "corpus.txt"
    corpus.write_text("".join(DOCS))
    spec = _spec(tmp, {"source": str(corpus)})
    _train(tmp, spec)
    st = corpus.stat()
    text = corpus.read_text()
    corpus.write_text(text[:100] + text[101:200][::-1] + text[200:] + text[100])  # same size
    os.utime(corpus, ns=(st.st_atime_ns, st.st_mtime_ns))
    return ["run", str(spec), "--results", str(tmp / "res")]


def setup_tokenizer_swapped_after_run(tmp):
    shards = _shards_with_tokenizer(tmp)
    spec = _spec(tmp, {"source": str(shards), "vocab_size": 300})
    _train(tmp, spec)
    cfg = json.loads((shards / "tokenizer.json").read_text())
    cfg["model"]["vocab"]["Ġzz"] = cfg["model"]["vocab"].pop("Ġthe", 299)
    (shards / "tokenizer.json").write_text(json.dumps(cfg))
    return ["run", str(spec), "--results", str(tmp / "res")]


def setup_trailing_slash(tmp):
    tok = _bpe_folder(tmp)
    _train(tmp, _spec(tmp, {"source": str(tok)}))
    return ["run", str(_spec(tmp, {"source": str(tok) + "/"})), "--results", str(tmp / "res")]


def setup_relative_then_absolute(tmp):
    tok = _bpe_folder(tmp)
    _train(tmp, _spec(tmp, {"source": "tok"}))  # the spec sits in tmp, beside tok
    return ["run", str(_spec(tmp, {"source": str(tok.resolve())})), "--results", str(tmp / "res")]


def setup_garbage_tokenizer_in_sample(tmp):
    shards = _shards_with_tokenizer(tmp)
    _train(tmp, _spec(tmp, {"source": str(shards), "vocab_size": 300}))
    run_dir = next((tmp / "res" / "h").glob("*/run.json")).parent
    (shards / "tokenizer.json").write_text("{ garbage")
    return ["sample", str(run_dir), "--prompt", "the quick", "--max-new-tokens", "4"]


# ---------------------------------------------------------------- specs and paths


def setup_relative_from_elsewhere(tmp):
    """The spec and its data in exp/, the command run from another folder."""
    (tmp / "exp").mkdir()
    (tmp / "exp" / "corpus.txt").write_text("".join(DOCS))
    spec = _spec(tmp, {"source": "corpus.txt"}, name="exp/spec.yaml")
    (tmp / "elsewhere").mkdir()
    os.chdir(tmp / "elsewhere")
    return ["plan", str(spec)]


def setup_missing_folder(tmp):
    return ["plan", str(_spec(tmp, {"source": "not-yet-copied"}))]


def setup_missing_folder_with_vocab(tmp):
    return ["plan", str(_spec(tmp, {"source": "not-yet-copied", "vocab_size": 300}))]


def setup_missing_folder_run(tmp):
    return ["run", str(_spec(tmp, {"source": "not-yet-copied", "vocab_size": 300})),
            "--results", str(tmp / "res")]


PROBES = [
    Probe("sparse tokenizer ids > 65535", setup_sparse_tokenizer, 0, "(uint32, vocab 70,001)",
          after_sparse_tokenizer, needs=("tokenizers",)),
    Probe("truncated .jsonl.gz", setup_gz_truncated, 2,
          "docs.jsonl.gz: the gzip stream ends early (a truncated download or copy) after line", _no_output),
    Probe(".jsonl.gz that is not gzip", setup_gz_not_gzip, 2, "docs.jsonl.gz: not a gzip file", _no_output),
    Probe("corrupt .jsonl.gz", setup_gz_corrupt, 2, "docs.jsonl.gz: corrupt gzip data", _no_output),
    Probe("JSONL line cut short", setup_json_bad_line, 2,
          "d.jsonl:2: not a JSON object with a 'text' field", _no_output),
    Probe("JSONL lone surrogate", setup_lone_surrogate, 2,
          "d.jsonl:2: field 'text' holds a lone surrogate (\\ud800", _no_output),
    Probe("Parquet column of ints", setup_parquet_ints, 2,
          "t.parquet: column 'text' holds int64, not text", _no_output, needs=("pyarrow",)),
    Probe("Parquet column of lists", setup_parquet_lists, 2,
          "t.parquet: column 'text' holds list<", _no_output, needs=("pyarrow",)),
    Probe("Parquet column of binary", setup_parquet_binary, 2,
          "t.parquet: column 'text' holds binary, not text", _no_output, needs=("pyarrow",)),
    Probe("unreadable input file", setup_unreadable, 2, "f000.txt: not readable (permission denied)",
          _no_output),
    Probe("garbage tokenizer.json (prepare)", setup_garbage_tokenizer, 2,
          "tokenizer.json: not a tokenizer.json the tokenizers library can read", _no_output,
          needs=("tokenizers",)),
    Probe("FIFO in the input folder", setup_fifo_in_folder, 0, "pipe.txt: a named pipe (FIFO), not a "
          "regular file", lambda tmp: (tmp / "o" / "meta.json").is_file(), own_process=True),
    Probe("FIFO as the input", setup_fifo_as_input, 2, "pipe.jsonl: a named pipe (FIFO), not a regular "
          "file or folder", _no_output, own_process=True),
    Probe("stale DIR.tmp-* of a killed prepare", setup_stale_tmp, 0, "removed ", after_stale_tmp),
    Probe("DIR.tmp-* held by a live prepare", setup_live_tmp, 0, "train +", after_live_tmp),
    Probe("parents of --out on failure", setup_parents_on_failure, 2, "too small to split",
          _nothing_under_a),
    Probe("--out inside the input", setup_out_inside_input, 2, "corpus/tok lies inside the input",
          _no_tok_in_corpus),
    Probe("literal <|endoftext|> in text", setup_literal_eot, 0, "from 200 documents",
          after_literal_eot, needs=("tokenizers",)),
    Probe("partly copied train.bin (even length)", setup_partial_train_bin, 2,
          "train.bin: meta.json records", _no_results, needs=("tokenizers",)),
    Probe("train.bin edited, same size", setup_sha_differs, 2, "train.bin: sha256", _no_results,
          needs=("tokenizers",)),
    Probe("meta.json token count off by one", setup_counts_differ, 2, "val.bin: meta.json records",
          _no_results, needs=("tokenizers",)),
    Probe("tokenizer.json swapped in a prepared folder", setup_tokenizer_swapped_in_folder, 2,
          "tokenizer.json: sha256", _no_results, needs=("tokenizers",)),
    Probe("llm.c shard shorter than its header", setup_llmc_short, 2,
          "its llm.c header says 5,000 tokens, the file holds 3,000", _no_results),
    Probe("edit restoring size and mtime, after a run", setup_edit_restoring_mtime, 2,
          "differs in data.sha256", slow=True, one_problem=False),
    Probe("tokenizer.json swapped after a run", setup_tokenizer_swapped_after_run, 2,
          "differs in data.tokenizer_sha256", slow=True, one_problem=False, needs=("tokenizers",)),
    Probe("source with a trailing slash, after a run", setup_trailing_slash, 0, "results in",
          slow=True, needs=("tokenizers",)),
    Probe("relative, then absolute source, after a run", setup_relative_then_absolute, 0,
          "results in", slow=True, needs=("tokenizers",)),
    Probe("garbage tokenizer.json (sample)", setup_garbage_tokenizer_in_sample, 2,
          "tokenizer.json: not a tokenizer.json the tokenizers library can read", slow=True,
          needs=("tokenizers",)),
    Probe("relative data.source, run from elsewhere", setup_relative_from_elsewhere, 0,
          "exp/corpus.txt (text, byte tokens; vocab 256;"),
    Probe("missing token folder, no vocab_size (plan)", setup_missing_folder, 2,
          "data.source: ", ),
    Probe("missing token folder, vocab_size (plan)", setup_missing_folder_with_vocab, 0,
          "not-yet-copied: no such file or folder: planned without the data"),
    Probe("missing token folder, vocab_size (run)", setup_missing_folder_run, 2,
          "not-yet-copied: no such file or folder", _no_results),
]


# ---------------------------------------------------------------- the tests


def _skip_unmet(probe: Probe) -> None:
    for mod in probe.needs:
        pytest.importorskip(mod)
    if probe.setup is setup_unreadable and os.geteuid() == 0:
        pytest.skip("root reads any file: permissions cannot be probed")


@pytest.fixture
def probe_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("MODEXP_CACHE", str(tmp_path / "cache"))
    work = tmp_path / "w"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


@pytest.mark.parametrize("probe", PROBES, ids=[p.name for p in PROBES])
def test_probe(probe, probe_dir):
    _skip_unmet(probe)
    args = probe.setup(probe_dir)
    if probe.own_process:
        code, output = _subprocess(args, Path.cwd(), ROOT, timeout=60)
    else:
        from typer.testing import CliRunner

        from modexp.cli import app

        r = CliRunner().invoke(app, args)
        code, output = r.exit_code, r.output
    flat = " ".join(output.split())
    assert "Traceback" not in output and code == probe.code, output
    assert " ".join(probe.line.split()) in flat, output
    if code == 2 and probe.one_problem:
        assert "error: 1 problem(s)" in output, output  # one line, naming the file or field
    if probe.after is not None:
        assert probe.after(probe_dir) is not False


def test_ctrl_c_ends_prepare_and_leaves_nothing(tmp_path):
    """SIGINT mid-way through reading for BPE: the process ends promptly, no temp folder left."""
    pytest.importorskip("tokenizers")
    big = tmp_path / "big.txt"
    with open(big, "w") as f:
        for _ in range(60):
            f.write("".join(DOCS))
    proc = subprocess.Popen([sys.executable, "-m", "modexp", "prepare", str(big), "--out",
                             str(tmp_path / "o"), "--tokenizer", "bpe:4000", "-q"],
                            cwd=tmp_path, env=_env(ROOT), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 30
    while not list(tmp_path.glob("o.tmp-*")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("prepare ignored Ctrl-C")
    assert proc.returncode != 0 and not list(tmp_path.glob("o*"))


def test_a_large_text_file_is_read_in_chunks(tmp_path):
    """Reading one 24 MB text file holds a read chunk and a piece, not the file (tracemalloc)."""
    import tracemalloc

    from modexp.data.documents import PIECE_CHARS, documents, scan_inputs

    big = tmp_path / "big.txt"
    line = "x" * 99 + "\n"
    with open(big, "w") as f:
        f.write(line * 240_000)
    inputs = scan_inputs([str(big)])
    tracemalloc.start()
    n = chars = 0
    for piece in documents(inputs, "text"):
        n, chars = n + 1, chars + len(piece.text)
        assert len(piece.text) <= PIECE_CHARS
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert chars == big.stat().st_size and n > 300
    assert peak < 8 << 20, f"peak {peak / 1e6:.1f} MB while reading a {big.stat().st_size / 1e6:.0f} MB file"


def test_streamed_pieces_are_the_whole_texts_pieces(tmp_path):
    """The chunked reader cuts a file exactly where cutting its whole text would (so prepare's
    split and output do not depend on the read size), bad UTF-8 replaced the same way."""
    from modexp.data import documents as D

    rng = np.random.default_rng(0)
    for size, nl in ((0, 0.0), (10, 0.1), (300_000, 0.0), (300_000, 0.001), (2_500_000, 0.0002)):
        raw = bytearray(rng.integers(1, 256, size, dtype=np.uint8).tobytes())
        raw[::7] = b"a" * len(raw[::7])
        for i in np.flatnonzero(rng.random(size) < nl):
            raw[i] = 10
        f = tmp_path / f"t{size}.txt"
        f.write_bytes(bytes(raw))
        want = list(D._pieces_of(iter([(bytes(raw).decode("utf-8", errors="replace"), 0)])))
        with open(f, "rb") as fh:
            got = list(D._text_pieces(f, fh))
        assert [(p.text, p.new_doc) for p in got] == [(p.text, p.new_doc) for p in want]
        assert sum(p.nbytes for p in got) == size


# ---------------------------------------------------------------- the before/after table


def _env(root: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(root) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("COLUMNS", "200")
    return env


def _subprocess(args: list[str], cwd: Path, root: Path, timeout: float) -> tuple[int | str, str]:
    """(exit code or 'hung', output) of `python -m modexp ARGS`; a hang gets SIGINT, then a kill."""
    proc = subprocess.Popen([sys.executable, "-m", "modexp", *args], cwd=cwd, env=_env(root),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
        return proc.returncode, out
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=5)
            return f"hung {timeout:.0f} s; Ctrl-C -> {proc.returncode}", out
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
            return f"hung {timeout:.0f} s; Ctrl-C ignored", out


def _gist(output: str) -> str:
    """The line that matters: the first problem line, else a warning, else the last line."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for pick in (lambda l: l.startswith("- "), lambda l: "Error" in l or "error" in l,
                 lambda l: l.startswith("data.source:"), lambda l: l.startswith("warning:"),
                 lambda l: l.startswith("note:")):
        hit = [line for line in lines if pick(line)]
        if hit:
            return hit[0][:150]
    return lines[-1][:150] if lines else ""


def table(root: Path, timeout: float = 20) -> str:
    """Every probe run against the modexp importable from `root`: a markdown table."""
    import tempfile

    rows = ["| probe | exit | line | on disk after |", "|---|---|---|---|"]
    here = os.getcwd()
    for probe in PROBES:
        if probe.setup is setup_unreadable and os.geteuid() == 0:
            rows.append(f"| {probe.name} | n/a | run as root: every file is readable | |")
            continue
        with tempfile.TemporaryDirectory() as d:
            tmp = Path(d) / "w"
            tmp.mkdir()
            os.environ["MODEXP_CACHE"] = str(Path(d) / "cache")
            os.chdir(tmp)
            try:
                args = probe.setup(tmp)
            except Exception as e:  # a setup the code under test cannot serve
                rows.append(f"| {probe.name} | setup failed | {type(e).__name__}: {e} | |")
                os.chdir(here)
                continue
            code, out = _subprocess(args, Path.cwd(), root, timeout)
            disk = "ok"
            if probe.after is not None:
                try:
                    disk = "ok" if probe.after(tmp) is not False else "wrong"
                except AssertionError as e:
                    disk = f"wrong: {str(e)[:80]}" if str(e) else "wrong"
                except Exception as e:
                    disk = f"wrong ({type(e).__name__})"
            tb = " (traceback)" if "Traceback" in out else ""
            gist = _gist(out).replace("|", "\\|")
            rows.append(f"| {probe.name} | {code}{tb} | {gist} | {disk} |")
            os.chdir(here)
    return "\n".join(rows)


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=ROOT, help="checkout whose modexp to probe")
    a = ap.parse_args()
    CODE_ROOT = a.root.resolve()
    print(table(CODE_ROOT))
