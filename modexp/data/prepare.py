"""`modexp prepare`: text corpora -> a token folder (train.bin, val.bin, tokenizer.json, meta.json).

Streams: documents are read in pieces (modexp/data/documents.py), encoded in batches of about
BATCH_CHARS by the tokenizer's multi-threaded encode_batch while the next batch is read, and
appended to the .bin files, so memory does not grow with the corpus. Everything is written
into DIR.tmp-xxxx and renamed to DIR at the end (meta.json last), so a DIR that exists is
complete. Validation: piece i (a document, or a 64 Ki-character piece of a long one) is held out
when frac((i + 1) * phi) < val_fraction, a deterministic low-discrepancy choice, so any prefix
of the corpus holds out close to val_fraction of its pieces.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from modexp.data.documents import InputError, check_inputs, documents
from modexp.spec import SpecError

BATCH_CHARS = 1 << 20  # ~1 Mi characters per encode_batch call (its Encodings cost ~100 B a token)
PHI = (5 ** 0.5 - 1) / 2
EOT = "<|endoftext|>"  # the document separator of trained tokenizers (id 0)
_EOT_NAMES = (EOT, "<|end_of_text|>", "</s>", "<eos>", "<|eos|>")


@dataclass
class PrepareReport:
    """What `modexp prepare` wrote."""

    out: Path
    meta: dict
    seconds: float


def is_val(i: int, val_fraction: float) -> bool:
    """Whether piece i goes to validation (deterministic, evenly spread)."""
    return ((i + 1) * PHI) % 1.0 < val_fraction


def parse_tokenizer(arg: str) -> tuple[str, int | None]:
    """bytes | bpe:VOCAB | PATH.json -> (kind, vocab or None); SpecError if malformed."""
    if arg == "bytes":
        return "bytes", 256
    if arg.startswith("bpe:"):
        try:
            vocab = int(arg[4:])
            assert 257 <= vocab <= 1 << 20
        except (ValueError, AssertionError):
            raise SpecError("--tokenizer", [f"--tokenizer: bpe:VOCAB needs 257 <= VOCAB <= "
                                            f"{1 << 20}, got {arg!r}"]) from None
        return "bpe", vocab
    if arg.endswith(".json") and Path(arg).is_file():
        return "file", None
    raise SpecError("--tokenizer", [f"--tokenizer: expected bytes, bpe:VOCAB or an existing "
                                    f"tokenizer.json file, got {arg!r}"])


def _need_tokenizers():
    try:
        import tokenizers
    except ImportError:
        raise SpecError("--tokenizer", ["--tokenizer: BPE tokenizers need the `data` extra "
                                        "(pip install 'modexp[data]')"]) from None
    return tokenizers


def train_bpe(texts, vocab: int):
    """A byte-level BPE tokenizer (GPT-2 style pre-tokenisation) trained on a text iterator."""
    tk = _need_tokenizers()
    tok = tk.Tokenizer(tk.models.BPE())
    tok.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tk.decoders.ByteLevel()
    trainer = tk.trainers.BpeTrainer(vocab_size=vocab, special_tokens=[EOT], show_progress=False,
                                     initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


class _Encoder:
    """Text batches -> token id arrays: UTF-8 bytes, or a tokenizers.Tokenizer; plus separator."""

    def __init__(self, tok=None):
        self.tok = tok
        self.sep = None
        if tok is not None:
            ids = [tok.token_to_id(n) for n in _EOT_NAMES]
            self.sep = next((i for i in ids if i is not None), None)
        self.vocab = 256 if tok is None else tok.get_vocab_size()

    def encode(self, texts: list[str]) -> list[np.ndarray]:
        """One array per text (multi-threaded in tokenizers; the GIL is released)."""
        if self.tok is None:
            return [np.frombuffer(t.encode("utf-8"), dtype=np.uint8) for t in texts]
        fast = getattr(self.tok, "encode_batch_fast", self.tok.encode_batch)
        return [np.asarray(e.ids) for e in fast(texts, add_special_tokens=False)]


class _BinWriter:
    """Appends token arrays to one .bin file, hashing as it goes."""

    def __init__(self, path: Path, dtype):
        self.path, self.dtype = path, np.dtype(dtype)
        self.f, self.sha, self.tokens = open(path, "wb"), hashlib.sha256(), 0

    def write(self, ids: np.ndarray) -> None:
        """Append ids in the file's dtype."""
        b = ids.astype(self.dtype, copy=False).tobytes()
        self.f.write(b)
        self.sha.update(b)
        self.tokens += len(ids)

    def close(self) -> dict:
        """Flush to disk; the file's token count and sha256."""
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()
        return {"tokens": self.tokens, "sha256": self.sha.hexdigest()}


def _batches(pieces, val_fraction: float):
    """(texts, new_doc flags, val flags) batches of about BATCH_CHARS characters."""
    texts, news, vals, size = [], [], [], 0
    for i, (text, new) in enumerate(pieces):
        texts.append(text), news.append(new), vals.append(is_val(i, val_fraction))
        size += len(text)
        if size >= BATCH_CHARS:
            yield texts, news, vals
            texts, news, vals, size = [], [], [], 0
    if texts:
        yield texts, news, vals


def _prefetched(it, depth: int = 2):
    """Run an iterator in a thread, `depth` items ahead (reading overlaps encoding)."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()

    def work():
        try:
            for x in it:
                q.put(x)
            q.put(done)
        except BaseException as e:  # re-raised in the consumer
            q.put(e)

    threading.Thread(target=work, daemon=True).start()
    while (x := q.get()) is not done:
        if isinstance(x, BaseException):
            raise x
        yield x


def _check(inputs: list[str], out: Path, val_fraction: float, tokenizer: str) -> int:
    """Every problem with the arguments, raised at once before anything is written."""
    problems, total = check_inputs(inputs) if inputs else (["INPUT: give at least one input"], 0)
    try:
        kind, _ = parse_tokenizer(tokenizer)
        if kind != "bytes":
            _need_tokenizers()
    except SpecError as e:
        problems += e.problems
    if not 0 < val_fraction < 0.5:
        problems.append(f"--val-fraction: must lie in (0, 0.5), got {val_fraction}")
    if out.exists():
        problems.append(f"--out: {out} already exists; remove it or choose another folder")
    if problems:
        raise SpecError("modexp prepare", problems)
    return total


def prepare(inputs: list[str], out: str | Path, tokenizer: str = "bytes", text_field: str = "text",
            val_fraction: float = 0.01, progress=None) -> PrepareReport:
    """Tokenise the inputs into the token folder `out` (see the module docstring)."""
    out, t0 = Path(out), time.time()
    total = _check(inputs, out, val_fraction, tokenizer)
    progress = progress or _NoProgress()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f"{out.name}.tmp-"))
    try:
        meta = _prepare_into(tmp, inputs, tokenizer, text_field, val_fraction, total, progress)
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o777 & ~mask)  # mkdtemp makes it private; the folder is data to share
        os.rename(tmp, out)
    except InputError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise SpecError("modexp prepare", [str(e)]) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return PrepareReport(out, meta, time.time() - t0)


def _prepare_into(tmp: Path, inputs, tokenizer, text_field, val_fraction, total, progress) -> dict:
    kind, vocab = parse_tokenizer(tokenizer)
    tok = None
    if kind == "bpe":
        progress.phase("training BPE", total)
        train_texts = (t for b in _batches(documents(inputs, text_field, progress.advance),
                                           val_fraction) for t, v in zip(b[0], b[2]) if not v)
        tok = train_bpe(train_texts, vocab)
    elif kind == "file":
        tok = _need_tokenizers().Tokenizer.from_file(tokenizer)
    if tok is not None:
        tok.save(str(tmp / "tokenizer.json"))
    enc = _Encoder(tok)
    dtype = "uint16" if enc.vocab <= 1 << 16 else "uint32"
    writers = {s: _BinWriter(tmp / f"{s}.bin", dtype) for s in ("train", "val")}
    progress.phase("encoding", total)
    n_docs = n_pieces = n_chars = 0
    batches = _prefetched(_batches(documents(inputs, text_field, progress.advance), val_fraction))
    for texts, news, vals in batches:
        for text, new, val, ids in zip(texts, news, vals, enc.encode(texts)):
            if new and enc.sep is not None:
                ids = np.concatenate([[enc.sep], ids])
            writers["val" if val else "train"].write(ids)
        n_docs, n_pieces, n_chars = n_docs + sum(news), n_pieces + len(texts), n_chars + sum(map(len, texts))
    files = {f"{s}.bin": w.close() for s, w in writers.items()}
    progress.done()
    if files["train.bin"]["tokens"] == 0 or files["val.bin"]["tokens"] == 0:
        raise InputError(f"the corpus is too small to split: {n_pieces} piece(s) of up to 64 Ki "
                         f"characters; the validation or training split is empty "
                         f"(raise --val-fraction or add text)")
    if tok is not None:
        files["tokenizer.json"] = {"sha256": _sha256(tmp / "tokenizer.json")}
    meta = {"format": "modexp-tokens/1", "vocab_size": enc.vocab, "dtype": dtype,
            "tokenizer": "bytes" if tok is None else ("bpe" if kind == "bpe" else tokenizer),
            "separator": enc.sep, "train_tokens": files["train.bin"]["tokens"],
            "val_tokens": files["val.bin"]["tokens"], "documents": n_docs, "pieces": n_pieces,
            "characters": n_chars, "input_bytes": total, "inputs": list(inputs),
            "text_field": text_field, "val_fraction": val_fraction,
            "split": "piece i (document or 64 Ki-char piece) is validation iff "
                     "frac((i+1)*0.6180339887) < val_fraction", "files": files}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


class _NoProgress:
    def phase(self, name: str, total: int) -> None: ...
    def advance(self, n: int) -> None: ...
    def done(self) -> None: ...
