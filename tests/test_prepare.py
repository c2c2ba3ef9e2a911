"""`modexp prepare`: corpora of text, JSONL and Parquet into token folders; bad input exits 2."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from modexp.cli import app
from modexp.data.prepare import is_val, prepare
from modexp.spec import SpecError

TEXT = "def f(x):\n    return x + 1\n\nclass A:\n    pass\n"


@pytest.fixture
def corpus(tmp_path):
    """A folder of text files (one binary, skipped), a .jsonl.gz and a .parquet file."""
    src = tmp_path / "src"
    (src / "pkg").mkdir(parents=True)
    for i in range(40):
        (src / "pkg" / f"m{i:02d}.py").write_text(f"# module {i}\n" + TEXT * (i % 5 + 1))
    (src / "blob.bin").write_bytes(b"\0\1\2" * 100)
    with gzip.open(tmp_path / "docs.jsonl.gz", "wt") as f:
        for i in range(60):
            f.write(json.dumps({"text": f"note {i}: héllo wörld " * 3, "id": i}) + "\n")
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    pq.write_table(pa.table({"body": [f"row {i} of the table" for i in range(50)]}),
                   tmp_path / "t.parquet", row_group_size=16)
    return tmp_path


def test_bytes_folder_is_the_text_itself(corpus):
    rep = prepare([str(corpus / "src")], corpus / "out", "bytes", val_fraction=0.1)
    m = json.loads((corpus / "out" / "meta.json").read_text())
    assert m == rep.meta and m["vocab_size"] == 256 and m["dtype"] == "uint16"
    assert m["documents"] == 40  # the binary file is skipped
    train = np.fromfile(corpus / "out" / "train.bin", dtype=np.uint16)
    val = np.fromfile(corpus / "out" / "val.bin", dtype=np.uint16)
    assert (len(train), len(val)) == (m["train_tokens"], m["val_tokens"])
    files = sorted((corpus / "src" / "pkg").iterdir())
    want_val = b"".join(f.read_bytes() for i, f in enumerate(files) if is_val(i, 0.1))
    assert bytes(val.astype(np.uint8)) == want_val and len(want_val) > 0
    assert len(train) + len(val) == sum(f.stat().st_size for f in files)


def test_bpe_on_mixed_inputs_round_trips(corpus):
    tokenizers = pytest.importorskip("tokenizers")
    out = corpus / "bpe"
    prepare([str(corpus / "src"), str(corpus / "docs.jsonl.gz")], out, "bpe:300", val_fraction=0.2)
    m = json.loads((out / "meta.json").read_text())
    assert m["vocab_size"] == 300 and m["separator"] == 0 and m["documents"] == 100
    tok = tokenizers.Tokenizer.from_file(str(out / "tokenizer.json"))
    ids = np.fromfile(out / "train.bin", dtype=np.uint16)
    assert ids.max() < 300 and ids[0] == 0  # every document starts with <|endoftext|>
    text = tok.decode(ids.tolist(), skip_special_tokens=False)
    assert "# module 1\n" + TEXT * 2 in text and "note 1: héllo wörld" in text + tok.decode(
        np.fromfile(out / "val.bin", dtype=np.uint16).tolist())
    import hashlib
    assert m["files"]["train.bin"]["sha256"] == hashlib.sha256((out / "train.bin").read_bytes()).hexdigest()


def test_parquet_field_and_existing_tokenizer(corpus):
    pytest.importorskip("tokenizers")
    prepare([str(corpus / "docs.jsonl.gz")], corpus / "a", "bpe:280", val_fraction=0.2)
    prepare([str(corpus / "t.parquet")], corpus / "b", str(corpus / "a" / "tokenizer.json"),
            text_field="body", val_fraction=0.2)
    m = json.loads((corpus / "b" / "meta.json").read_text())
    assert m["documents"] == 50 and m["vocab_size"] == 280
    assert (corpus / "b" / "tokenizer.json").read_bytes() == (corpus / "a" / "tokenizer.json").read_bytes()


def test_same_input_same_folder(corpus):
    for d in ("x", "y"):
        prepare([str(corpus / "src")], corpus / d, "bytes", val_fraction=0.1)
    for f in ("train.bin", "val.bin"):
        assert (corpus / "x" / f).read_bytes() == (corpus / "y" / f).read_bytes()


def test_bad_inputs_exit_2_and_write_nothing(corpus):
    r = CliRunner().invoke(app, ["prepare", str(corpus / "missing"), str(corpus / "docs.jsonl.gz"),
                                 "--out", str(corpus / "o"), "--tokenizer", "bpe:x",
                                 "--val-fraction", "0.7"])
    assert r.exit_code == 2 and "Traceback" not in r.output
    for needle in ("missing: no such file", "--tokenizer: bpe:VOCAB", "--val-fraction: must lie"):
        assert needle in r.output
    assert not list(corpus.glob("o*"))
    with pytest.raises(SpecError, match="no column 'text'; columns: body"):
        prepare([str(corpus / "t.parquet")], corpus / "o", "bytes")
    with pytest.raises(SpecError, match=r"docs.jsonl.gz:1: not a JSON object with a 'txt' field"):
        prepare([str(corpus / "docs.jsonl.gz")], corpus / "o", "bytes", text_field="txt")
    assert not list(corpus.glob("o*"))  # the half-written temp folder is gone too


def test_hub_dataset_without_the_extra_is_a_clean_error(corpus, monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if not installed
    r = CliRunner().invoke(app, ["prepare", "hf:roneneldan/TinyStories", "--out", str(corpus / "o")])
    assert r.exit_code == 2 and "needs the `datasets` extra" in r.output


def test_too_small_to_split(tmp_path):
    (tmp_path / "one.txt").write_text("tiny")
    with pytest.raises(SpecError, match="too small to split"):
        prepare([str(tmp_path / "one.txt")], tmp_path / "o", "bytes", val_fraction=0.01)
    assert not list(tmp_path.glob("o.tmp-*")) and not (tmp_path / "o").exists()


MIXED = ["héllo wörld, ünïcödé café naïve résumé", "日本語のテキストと中文的文本", "русский текст и ещё",
         "عربى نص", "emoji 🙂🙃👍🏽 and ZWJ 👩\u200d💻", "tabs\t\tand   spaces    \n\n\n   \r\n end  ",
         "digits 1234567890 3.14159 1e10 0x1F 2024-05-20", "a's b't 're 've 'll 'd 'M 'S",
         "\u00a0nbsp\u2003em space\u3000ideographic", "ǅ ǈ ᾈ Ⅻ ⅷ ① ² combining e\u0301 a\u0308",
         "a literal <|endoftext|> and <|endoftext|><|endoftext|> in text", "x" * 3000, " " * 500]


def _trained(texts, vocab=400):
    from modexp.data.prepare import train_bpe

    return train_bpe(iter(texts), vocab)


def test_tiktoken_gives_the_tokenizers_ids(corpus):
    """On several corpora (code, non-ASCII scripts, whitespace runs, digits, special-token text)
    the fast encoder and tokenizers agree id for id, and prepare writes the same folder with
    either."""
    pytest.importorskip("tiktoken")
    from modexp.data.encoders import FastEncoder, TokenizersEncoder, pick_encoder, tiktoken_problem

    code = [f.read_text() for f in sorted((corpus / "src" / "pkg").iterdir())]
    for train in (code, MIXED * 20, code + MIXED * 5):
        tok = _trained(train)
        assert tiktoken_problem(tok) is None
        enc, why = pick_encoder(tok, 0, tok.get_vocab_size())
        assert isinstance(enc, FastEncoder) and why is None
        ref = TokenizersEncoder(tok, 0, tok.get_vocab_size())
        for texts in (code, MIXED, [t * 3 for t in MIXED], ["".join(MIXED)]):
            got, want = enc.encode(texts), ref.encode(texts)
            assert all(np.array_equal(a, b) for a, b in zip(got, want))
        assert enc.checked > 0
    out = {}
    for e in ("tokenizers", "tiktoken"):
        prepare([str(corpus / "src"), str(corpus / "docs.jsonl.gz")], corpus / e,
                str(corpus / "a.json") if e == "tiktoken" else _save(tok, corpus / "a.json"),
                val_fraction=0.2, encoder=e)
        out[e] = [(corpus / e / f).read_bytes() for f in ("train.bin", "val.bin")]
        assert json.loads((corpus / e / "meta.json").read_text())["encoder"] == e
    assert out["tokenizers"] == out["tiktoken"]


def _save(tok, path):
    tok.save(str(path))
    return str(path)


def test_tiktoken_is_not_used_where_it_could_differ(corpus, monkeypatch):
    """A BPE whose merges tiktoken's ranks would apply otherwise is refused by construction; a
    difference found while encoding falls back to tokenizers for the whole pass."""
    pytest.importorskip("tiktoken")
    from modexp.data import encoders
    from modexp.data.encoders import tiktoken_problem

    tok = _trained(MIXED * 20)
    cfg = json.loads(tok.to_str())
    vocab, n = cfg["model"]["vocab"], len(cfg["model"]["vocab"])
    # merges (q, z) then (z, j) then (q, zj): 'qzj' is a token, but from bytes tokenizers
    # reaches qz + j and stops, while tiktoken takes the whole piece as one token
    for i, (a, b) in enumerate([("q", "z"), ("z", "j"), ("q", "zj")]):
        vocab[a + b] = n + i
        cfg["model"]["merges"].append([a, b])
    odd = type(tok).from_str(json.dumps(cfg))
    assert "do not encode to themselves" in tiktoken_problem(odd)
    cfg["normalizer"] = {"type": "NFC"}
    assert tiktoken_problem(type(tok).from_str(json.dumps(cfg))) == "it has a normalizer"
    r = CliRunner().invoke(app, ["prepare", str(corpus / "docs.jsonl.gz"), "--out", str(corpus / "o"),
                                 "--tokenizer", _save(odd, corpus / "odd.json"), "--encoder", "tiktoken"])
    assert r.exit_code == 2 and "--encoder: tiktoken: tiktoken cannot express" in r.output
    assert not (corpus / "o").exists() and not list(corpus.glob("o.tmp-*"))

    real = encoders.FastEncoder.encode
    def wrong_later(self, texts):  # a difference in the second batch only
        ids = real(self, texts)
        if self.batches > 1:
            raise encoders.EncoderMismatch("tiktoken and tokenizers differ at token 0 of a piece")
        return ids
    monkeypatch.setattr(encoders.FastEncoder, "encode", wrong_later)
    monkeypatch.setattr("modexp.data.prepare.BATCH_CHARS", 1 << 12)
    rep = prepare([str(corpus / "src")], corpus / "fb", _save(tok, corpus / "t.json"), val_fraction=0.2)
    assert rep.meta["encoder"] == "tokenizers" and any("encoded with tokenizers instead" in n for n in rep.notes)
    monkeypatch.undo()
    prepare([str(corpus / "src")], corpus / "ref", str(corpus / "t.json"), val_fraction=0.2, encoder="tokenizers")
    for f in ("train.bin", "val.bin"):
        assert (corpus / "fb" / f).read_bytes() == (corpus / "ref" / f).read_bytes()


def test_progress_counts_encoded_bytes_and_prints_plain_lines(corpus):
    """The encoding pass advances by the input bytes it has encoded, to the total; without a
    terminal, PrepareProgress prints plain lines (one per pass, then every `every` seconds)."""
    import io

    from rich.console import Console

    from modexp.runs.progress import PrepareProgress

    calls = []

    class Spy:
        def phase(self, name, total): calls.append(("phase", name, total))
        def advance(self, n): calls.append(("advance", n))
        def done(self): calls.append(("done",))

    rep = prepare([str(corpus / "src"), str(corpus / "docs.jsonl.gz")], corpus / "o", "bytes",
                  val_fraction=0.2, progress=Spy())
    (_, name, total), *rest = calls
    assert name == "encoding" and total == rep.meta["input_bytes"]
    assert sum(c[1] for c in rest if c[0] == "advance") == total and rest[-1] == ("done",)
    buf = io.StringIO()
    ui = PrepareProgress(Console(file=buf, force_terminal=False, width=200), every=0)
    prepare([str(corpus / "src")], corpus / "p", "bytes", val_fraction=0.2, progress=ui)
    lines = buf.getvalue().splitlines()
    assert lines[0].startswith("prepare: encoding 0.000/") and "ETA" in lines[-1] and "(100%)" in lines[-1]
