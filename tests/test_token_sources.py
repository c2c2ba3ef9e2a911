"""Token folders as data sources: prepared folders, .bin shards, uint32, llm.c headers, id checks."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from modexp.cli import app
from modexp.data.corpus import SourceError, is_token_source, max_token, resolve_source
from modexp.data.tokens import Shards, TokenData
from modexp.plan import plan_file
from modexp.spec import SpecError


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def _prepared(folder, vocab=500, n=4000, n_val=600, dtype=np.uint16):
    folder.mkdir()
    rng = np.random.default_rng(0)
    rng.integers(0, vocab, n).astype(dtype).tofile(folder / "train.bin")
    rng.integers(0, vocab, n_val).astype(dtype).tofile(folder / "val.bin")
    (folder / "meta.json").write_text(json.dumps({"vocab_size": vocab, "dtype": np.dtype(dtype).name,
                                                  "files": {"train.bin": {"sha256": "x"}}}))
    return folder


def test_prepared_folder_gives_vocab_and_validation(tmp_path, write_spec):
    folder = _prepared(tmp_path / "tok")
    spec, _ = plan_file(write_spec(data={"source": str(folder), "seq_len": 16}))  # the data stage reads meta.json
    assert spec.data.vocab == 500
    data = TokenData(str(folder), 16, 0.05, spec.data.vocab)
    assert np.array_equal(data.val, np.fromfile(folder / "val.bin", dtype=np.uint16))
    assert len(data.train) == 4000
    _, plan = plan_file(write_spec(data={"source": str(folder), "seq_len": 16}))
    assert plan.runs[0].vocab == 500 and plan.runs[0].epochs == pytest.approx(plan.runs[0].tokens / 4000)
    with pytest.raises(SpecError, match=r"data.vocab_size: 512 disagrees with .*meta.json \(vocab_size 500\)"):
        plan_file(write_spec(data={"source": str(folder), "vocab_size": 512}))


def test_shard_folder_is_tokens_not_text(tmp_path, write_spec):
    folder = tmp_path / "shards"
    folder.mkdir()
    parts = [np.arange(k * 100, k * 100 + 100, dtype=np.uint16) for k in range(3)]
    for k, p in enumerate(parts):
        p.tofile(folder / f"fineweb_train_{k:06d}.bin")
    np.arange(50, dtype=np.uint16).tofile(folder / "fineweb_val_000000.bin")
    (folder / "README.txt").write_text("not tokens")
    assert is_token_source(str(folder))
    with pytest.raises(SpecError, match="vocab_size: required for .bin token files"):
        plan_file(write_spec(data={"source": str(folder)}))
    data = TokenData(str(folder), 8, 0.05, vocab=300)
    assert len(data.train) == 300 and len(data.val) == 50
    idx = np.array([[0, 99, 100, 101], [199, 200, 250, 299]])  # across shard boundaries
    assert np.array_equal(data.train[idx], np.concatenate(parts)[idx])
    assert np.array_equal(data.train[150:260][np.arange(110)], np.concatenate(parts)[150:260])
    x, y = data.train_batch(seed=0, step=0, batch_size=64)
    assert torch.equal(x[:, 1:], y[:, :-1]) and torch.equal(y - x, torch.ones_like(x))  # contiguous


def test_uint32_and_llmc_header(tmp_path):
    big = np.array([0, 70_000, 5, 99_999] * 10, dtype=np.uint32)
    big.tofile(tmp_path / "big.bin")
    assert resolve_source(str(tmp_path / "big.bin"), 100_000).token_bytes == 4
    assert int(TokenData(str(tmp_path / "big.bin"), 4, 0.25, 100_000).train.max()) == 99_999
    header = np.zeros(256, np.int32)
    header[:3] = [20240520, 1, 30]
    with open(tmp_path / "llmc.bin", "wb") as f:
        f.write(header.tobytes() + np.arange(30, dtype=np.uint16).tobytes())
    data = TokenData(str(tmp_path / "llmc.bin"), 4, 0.2, 50)
    assert np.array_equal(np.concatenate([data.train[:], data.val[:]]), np.arange(30))


def test_token_id_beyond_vocab_exits_2_before_writing(tmp_path, write_spec):
    folder = _prepared(tmp_path / "tok", vocab=500)
    ids = np.fromfile(folder / "val.bin", dtype=np.uint16)
    ids[7] = 511
    ids.tofile(folder / "val.bin")
    spec = write_spec(data={"source": str(folder), "seq_len": 16})
    r = CliRunner().invoke(app, ["run", str(spec), "--results", str(tmp_path / "res")])
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert "val.bin: token id 511 >= vocab_size 500" in r.output.replace("\n", "")
    assert not (tmp_path / "res").exists()


def test_max_token_is_cached_by_fingerprint(tmp_path):
    f = tmp_path / "t.bin"
    np.array([1, 9, 3], dtype=np.uint16).tofile(f)
    assert max_token(f, 2) == 9
    st = os.stat(f)
    np.array([1, 2, 3], dtype=np.uint16).tofile(f)  # same size; restore the mtime: a cache hit
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert max_token(f, 2) == 9
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched: read again
    assert max_token(f, 2) == 3


def test_odd_sized_token_file(tmp_path):
    (tmp_path / "x.bin").write_bytes(b"abc")
    with pytest.raises(SourceError, match="not a whole number of uint16 tokens"):
        resolve_source(str(tmp_path / "x.bin"), 300)
    assert len(Shards([np.zeros(0, np.uint16), np.ones(3, np.uint16)])) == 3
