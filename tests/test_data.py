"""Data sources: the embedded stdlib corpus, text folders, uint16 .bin files, batches."""

from pathlib import Path

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


def _imports(path):
    """Every module a file imports, at module level or inside functions."""
    import ast

    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
    return out


def test_spec_and_data_import_only_downward():
    """modexp/spec reads no data (issue 25.6), and the data stage imports nothing above it:
    not the planner, models, training, runs, analysis or the CLI (function-level imports too)."""
    pkg = Path(__file__).resolve().parent.parent / "modexp"
    above = ("modexp.plan", "modexp.grid", "modexp.models", "modexp.training", "modexp.runs",
             "modexp.analysis", "modexp.bench", "modexp.cli")
    for f in sorted((pkg / "spec").glob("*.py")):
        assert not [m for m in _imports(f) if m.startswith("modexp.data")], f
    for f in sorted((pkg / "data").glob("*.py")):
        bad = [m for m in _imports(f) if m.startswith(above)]
        assert not bad, f"{f.name} imports {bad}"


def test_spec_paths_resolve_against_the_spec_folder(tmp_path, monkeypatch):
    """A relative data.source is the spec file's folder's (absolute afterwards); an absolute
    one, a builtin, or a spec parsed without a file stay as written; parsing reads no file."""
    import yaml

    from modexp.spec import load_spec, parse_spec
    from tests.conftest import TINY

    (tmp_path / "exp").mkdir()
    for source, want in (("corpus", tmp_path / "exp" / "corpus"), ("../data/tok/", tmp_path / "data" / "tok"),
                         ("/abs/x.bin", "/abs/x.bin"), ("builtin:pystdlib", "builtin:pystdlib"),
                         ("~/tok", Path.home() / "tok")):
        (tmp_path / "exp" / "s.yaml").write_text(yaml.safe_dump({**TINY, "data": {"source": source}}))
        monkeypatch.chdir("/")
        assert load_spec(tmp_path / "exp" / "s.yaml").data.source == str(want)
    assert parse_spec({**TINY, "data": {"source": "corpus"}}).data.source == "corpus"
    monkeypatch.setattr("pathlib.Path.exists", None)  # validation does not look at the disk
    monkeypatch.setattr("pathlib.Path.is_file", None)
    assert parse_spec({**TINY, "data": {"source": "tok", "vocab_size": 512}}).data.vocab == 512


def test_plan_reads_the_data_and_names_the_field(tmp_path, write_spec):
    """The planner asks the data stage: byte sources are 256, a missing source is an error naming
    data.source unless vocab_size is given (then one warning, and the note says where)."""
    from modexp.plan import plan_file
    from modexp.spec import SpecError

    corpus = tmp_path / "c.txt"
    corpus.write_text("hello world " * 500)
    with pytest.raises(SpecError, match="data.vocab_size: must be 256"):
        plan_file(write_spec(data={"source": str(corpus), "vocab_size": 300}))
    with pytest.raises(SpecError, match=r"data.source: .*nowhere: no such file or folder .*give "
                                        "data.vocab_size to plan without the data"):
        plan_file(write_spec(data={"source": "nowhere"}))
    with pytest.raises(SpecError, match="data.source: unknown builtin source 'builtin:x'"):
        plan_file(write_spec(data={"source": "builtin:x"}))
    spec, plan = plan_file(write_spec(data={"source": "nowhere", "vocab_size": 300}))
    assert plan.runs[0].vocab == 300 and plan.runs[0].epochs is None
    assert [w for w in plan.warnings if "planned without the data" in w] and plan.notes
    _, plan = plan_file(write_spec(data={"source": str(corpus)}))
    assert plan.notes == [f"data.source: {corpus} (text, byte tokens; vocab 256; "
                          f"{6000 - int(6000 * 0.05):,} training tokens)"]


def test_fingerprint_keeps_the_content_not_the_path(tmp_path):
    """The data's place and spelling are not part of a run's identity; its bytes and its
    tokenizer are."""
    from modexp.runs import fingerprint as fp

    spec = {"models": [{"name": "m"}], "variants": {"v": {}}, "train": {}, "flops": {}}
    plan = {"model": "m", "variant": "v", "seed": 0}
    data = {"sha256": "s", "tokenizer_sha256": "t"}

    def fields(source, **d):
        return fp.fingerprint({**spec, "data": {"source": source, "seq_len": 8}}, plan, {**data, **d})["fields"]

    base = fields("/data/tok")
    for same in ("/data/tok/", "tok", "/elsewhere/copy"):
        assert fp.differences(base, fields(same)) == []
    assert fp.differences(base, fields("/data/tok", sha256="x")) == ["data.sha256"]
    assert fp.differences(base, fields("/data/tok", tokenizer_sha256="u")) == ["data.tokenizer_sha256"]
    assert fp.differences(fields("builtin:pystdlib"), base) == ["data.source"]
