"""Data sources: the embedded stdlib corpus, text folders, uint16 .bin files, batches."""

import numpy as np
import pytest
import torch

from modexp.data.corpus import SourceError, resolve_source, stdlib_files
from modexp.data.tokens import TokenData


def test_pystdlib_is_sorted_and_excludes_tests():
    files = stdlib_files()
    assert len(files) > 100
    assert files == sorted(files, key=lambda p: p.as_posix())
    assert not any(part in ("test", "tests", "site-packages") for f in files for part in f.parts[-3:-1])
    from modexp.runs.fingerprint import data_fingerprint

    fp = data_fingerprint(resolve_source("builtin:pystdlib"))
    assert fp["tokens"] > 1_000_000 and len(fp["sha256"]) == 64 and fp["python"]


def test_text_folder_is_byte_level(tmp_path):
    (tmp_path / "b.txt").write_bytes(b"world")
    (tmp_path / "a.txt").write_bytes(b"hello ")
    data = TokenData(str(tmp_path), seq_len=2, val_fraction=0.3)
    assert bytes(np.concatenate([data.train, data.val])) == b"hello world"  # sorted order
    assert len(data.val) == 3  # the tail, int(11 * 0.3)


def test_bin_tokens_uint16(tmp_path):
    tokens = np.arange(1000, dtype=np.uint16) * 37
    path = tmp_path / "train.bin"
    tokens.tofile(path)
    data = TokenData(str(path), seq_len=8, val_fraction=0.1)
    x, y = data.train_batch(seed=0, step=0, batch_size=4)
    assert x.shape == (4, 8) and x.dtype == torch.long
    assert torch.equal(y[:, :-1], x[:, 1:])  # next-token targets
    assert int(data.train.max()) == int(tokens[:900].max())


def test_batches_are_seeded_and_sliceable():
    data = TokenData("builtin:pystdlib", seq_len=16, val_fraction=0.05)
    a = data.train_batch(seed=1, step=5, batch_size=8)
    b = data.train_batch(seed=1, step=5, batch_size=8)
    c = data.train_batch(seed=1, step=6, batch_size=8)
    assert torch.equal(a[0], b[0]) and not torch.equal(a[0], c[0])
    half = data.train_batch(seed=1, step=5, batch_size=8, rows=slice(4, 8))  # a DDP rank's share
    assert torch.equal(half[0], a[0][4:])
    v1, v2 = data.val_batches(2, 4), data.val_batches(4, 2)
    assert torch.equal(torch.cat([x for x, _ in v1]), torch.cat([x for x, _ in v2]))


def test_final_eval_windows_extend_the_regular_ones(tmp_path):
    """More rounds: the first batches are the one-round windows, the rest lie between them."""
    (tmp_path / "t.txt").write_bytes(bytes(range(256)) * 40)  # val: 1024 tokens, no repeats within 256
    data = TokenData(str(tmp_path), seq_len=8, val_fraction=0.1)
    one, four = data.val_batches(2, 4), data.val_batches(2, 4, rounds=4)
    assert len(four) == 8 and all(torch.equal(a[0], b[0]) for a, b in zip(one, four))
    starts = data.val_starts(8, rounds=4).tolist()
    assert torch.equal(four[5][0][1], torch.from_numpy(data.val[starts[21]:][:8].astype(np.int64)))
    assert len(set(starts)) == 32  # distinct windows
    gaps = np.diff(sorted(starts))
    last = len(data.val) - 9
    assert gaps.max() <= last / 7 / 4 + 1  # no wider gap than a round's shift: spread over the split


@pytest.mark.parametrize("make", ["missing", "empty"])
def test_missing_or_empty_source(tmp_path, make):
    path = tmp_path / "corpus.txt"
    if make == "empty":
        path.write_bytes(b"")
    with pytest.raises(SourceError, match="corpus.txt"):
        resolve_source(str(path))


def test_batch_seeds_never_collide_across_seeds_and_steps():
    """(seed, step) -> its own batch for any planned step count: the pairs that the old
    seed * 1_000_003 + step seeding (and any seed * 2**32 + step into torch's generator,
    which keeps 32 bits) mapped to one batch now differ."""
    from modexp.data.tokens import batch_seed

    data = TokenData("builtin:pystdlib", seq_len=16, val_fraction=0.05)
    for (s1, t1), (s2, t2) in [((0, 1_000_003), (1, 0)), ((0, 5), (1, 5)),
                               ((3, 2**31), (3 + 2**31 // 1_000_003, 2**31 % 1_000_003))]:
        a, b = data.train_batch(s1, t1, 8), data.train_batch(s2, t2, 8)
        assert not torch.equal(a[0], b[0])
    pairs = [(s, t) for s in range(4) for t in (0, 1, 999_999, 1_000_003, 2**32 - 1)]
    starts = {tuple(np.random.Generator(np.random.PCG64(batch_seed(s, t))).integers(0, 2**62, 2))
              for s, t in pairs}
    assert len(starts) == len(pairs)
    with pytest.raises(ValueError, match="seed"):
        batch_seed(0, 2**32)
    with pytest.raises(ValueError, match="seed"):
        batch_seed(-1, 0)
