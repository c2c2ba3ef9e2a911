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


def test_max_token_is_cached_by_fingerprint(tmp_path, monkeypatch):
    f = tmp_path / "t.bin"
    np.array([1, 9, 3], dtype=np.uint16).tofile(f)
    assert max_token(f, 2) == 9
    with monkeypatch.context() as m:  # unchanged: a cache hit, the file is not mapped again
        m.setattr("modexp.data.corpus.token_map", None)
        assert max_token(f, 2) == 9
    st = os.stat(f)
    np.array([1, 2, 3], dtype=np.uint16).tofile(f)  # same size; restore the mtime: still seen
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))  # (the ctime moved: issue 27.4)
    assert max_token(f, 2) == 3
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched: read again
    assert max_token(f, 2) == 3


def test_odd_sized_token_file(tmp_path):
    (tmp_path / "x.bin").write_bytes(b"abc")
    with pytest.raises(SourceError, match="not a whole number of uint16 tokens"):
        resolve_source(str(tmp_path / "x.bin"), 300)
    assert len(Shards([np.zeros(0, np.uint16), np.ones(3, np.uint16)])) == 3


def _real_folder(tmp_path):
    """A token folder written by `modexp prepare` (its meta.json records sizes and sha256s)."""
    from modexp.data.prepare import prepare

    (tmp_path / "txt").mkdir()
    for k in range(10):
        (tmp_path / "txt" / f"t{k}.txt").write_text("".join(f"line {i} of text {k}\n" for i in range(300)))
    prepare([str(tmp_path / "txt")], tmp_path / "tok", "bytes", val_fraction=0.2)
    return tmp_path / "tok"


def test_token_folder_is_checked_against_its_meta(tmp_path, monkeypatch):
    """Sizes and token counts at resolve time; sha256s by data_fingerprint, which a cached,
    unchanged folder answers without reading a data file, while an edit that restores size and
    mtime is read again and refused."""
    from modexp.runs.fingerprint import data_fingerprint

    tok = _real_folder(tmp_path)
    first = data_fingerprint(resolve_source(str(tok)))
    with monkeypatch.context() as m:
        m.setattr("modexp.data.verify.open", None, raising=False)  # a cache hit hashes no file
        assert data_fingerprint(resolve_source(str(tok))) == first
    ids = np.fromfile(tok / "val.bin", dtype=np.uint16)
    st = os.stat(tok / "val.bin")
    ids[:5] = ids[5:10]
    ids.tofile(tok / "val.bin")
    os.utime(tok / "val.bin", ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(SourceError, match=r"val.bin: sha256 \w+\.\.\. differs from the \w+\.\.\. meta.json records"):
        data_fingerprint(resolve_source(str(tok)))
    (tok / "val.bin").write_bytes(ids.tobytes()[:-2])
    with pytest.raises(SourceError, match="val.bin: meta.json records"):
        resolve_source(str(tok))


def test_llmc_header_count_must_match_the_file(tmp_path):
    header = np.zeros(256, np.int32)
    header[:3] = [20240520, 1, 30]
    for n, ok in ((30, True), (29, False), (31, False)):
        with open(tmp_path / "s.bin", "wb") as f:
            f.write(header.tobytes() + np.arange(n, dtype=np.uint16).tobytes())
        if ok:
            assert resolve_source(str(tmp_path / "s.bin"), 50).n_tokens == 30
        else:
            with pytest.raises(SourceError, match=f"llm.c header says 30 tokens, the file holds {n}"):
                resolve_source(str(tmp_path / "s.bin"), 50)
