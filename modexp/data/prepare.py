"""`modexp prepare`: text corpora -> a token folder (train.bin, val.bin, tokenizer.json, meta.json).

Streams: documents are read in pieces (modexp/data/documents.py), encoded in batches of about
BATCH_CHARS (modexp/data/encoders.py: tokenizers' multi-threaded encode_batch, or tiktoken
where it gives the same ids) while the next batch is read, and appended to the .bin files, so
memory does not grow with the corpus. Everything is written into DIR.tmp-xxxx and renamed to
DIR at the end (modexp/data/tempdir.py), so a DIR that exists is complete; a failure or Ctrl-C
leaves nothing behind. Validation: piece i (a document, or a 64 Ki-character piece of a long
one) is held out when frac((i + 1) * phi) < val_fraction, a deterministic low-discrepancy
choice, so any prefix of the corpus holds out close to val_fraction of its pieces.

What is checked before anything is kept: every input problem at once (documents.py), the
tokenizer.json (a file the tokenizers library cannot read is one line, exit 2), and every id
written: the vocabulary is the tokenizer's largest id + 1 (a tokenizer whose ids run past the
count it declares is not cut short), the dtype uint16 if that fits else uint32, and each
encoded batch's ids are range-checked against it (an id past it is an error naming the
tokenizer.json and the id, never a wrapped value on disk).

Progress (`progress`): phase(name, total bytes or None) at each pass, advance(n) per batch with
the input bytes whose text has been encoded and written (or read into the BPE trainer), done().
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from modexp.data.codec import read_tokenizer
from modexp.data.documents import InputError, Inputs, documents, scan_inputs
from modexp.data.encoders import BytesEncoder, EncoderMismatch, pick_encoder
from modexp.data.tempdir import TempFolder
from modexp.data.verify import file_sha256
from modexp.spec import SpecError

BATCH_CHARS = 1 << 20  # ~1 Mi characters per encode_batch call (its Encodings cost ~100 B a token)
PHI = (5 ** 0.5 - 1) / 2
EOT = "<|endoftext|>"  # the document separator of trained tokenizers (id 0)
_EOT_NAMES = (EOT, "<|end_of_text|>", "</s>", "<eos>", "<|eos|>")
ENCODERS = ("auto", "tokenizers", "tiktoken")
"""--encoder: auto (tiktoken where it gives tokenizers' ids, else tokenizers), or one of them."""


@dataclass
class PrepareReport:
    """What `modexp prepare` wrote, and what it noted on the way (skipped files, stale folders)."""

    out: Path
    meta: dict
    seconds: float
    notes: list[str] = field(default_factory=list)


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


def tokenizer_vocab(tok) -> int:
    """The vocabulary a model needs for a tokenizer's ids: its largest id + 1, which a sparse
    vocabulary (ids past the count it declares) makes larger than get_vocab_size()."""
    ids = tok.get_vocab(with_added_tokens=True).values()
    return max(tok.get_vocab_size(with_added_tokens=True), max(ids, default=-1) + 1)


def separator(tok) -> int | None:
    """The tokenizer's end-of-text token id, put before every document (None: no separator)."""
    ids = [tok.token_to_id(n) for n in _EOT_NAMES]
    return next((i for i in ids if i is not None), None)


class _BinWriter:
    """Appends token arrays to one .bin file, hashing as it goes."""

    def __init__(self, path: Path, dtype):
        self.path, self.dtype = path, np.dtype(dtype)
        self.f, self.sha, self.tokens = open(path, "wb"), hashlib.sha256(), 0

    def write(self, ids: np.ndarray) -> None:
        """Append ids in the file's dtype (the caller has range-checked them)."""
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
    """(texts, new_doc flags, val flags, input bytes) batches of about BATCH_CHARS characters."""
    texts, news, vals, size, nbytes = [], [], [], 0, 0
    for i, p in enumerate(pieces):
        texts.append(p.text), news.append(p.new_doc), vals.append(is_val(i, val_fraction))
        size, nbytes = size + len(p.text), nbytes + p.nbytes
        if size >= BATCH_CHARS:
            yield texts, news, vals, nbytes
            texts, news, vals, size, nbytes = [], [], [], 0, 0
    if texts:
        yield texts, news, vals, nbytes


def _prefetched(it, depth: int = 2):
    """Run an iterator in a thread, `depth` items ahead (reading overlaps encoding). The
    consumer waits in short slices, so Ctrl-C interrupts it; leaving stops the thread."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    done, stop = object(), threading.Event()

    def put(x) -> bool:
        while not stop.is_set():
            try:
                q.put(x, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work():
        try:
            for x in it:
                if not put(x):
                    return
            put(done)
        except BaseException as e:  # re-raised in the consumer
            put(e)

    threading.Thread(target=work, daemon=True).start()
    try:
        while True:
            try:
                x = q.get(timeout=0.1)
            except queue.Empty:
                continue
            if x is done:
                return
            if isinstance(x, BaseException):
                raise x
            yield x
    finally:
        stop.set()


@dataclass
class _Checked:
    """The arguments of one prepare, every problem raised at once before anything is written."""

    inputs: Inputs
    kind: str
    vocab: int | None
    tok: object = None  # a given tokenizer.json, loaded


def _check(inputs: list[str], out: Path, val_fraction: float, tokenizer: str, encoder: str) -> _Checked:
    problems = []
    scanned = scan_inputs(inputs, out) if inputs else Inputs([], problems=["INPUT: give at least one input"])
    problems += scanned.problems
    kind = vocab = tok = None
    try:
        kind, vocab = parse_tokenizer(tokenizer)
        if kind != "bytes":
            _need_tokenizers()
        if kind == "file":
            tok = read_tokenizer(tokenizer)
    except SpecError as e:
        problems += [p if p.startswith("--tokenizer") else f"--tokenizer: {e.source}: {p}"
                     for p in e.problems]
    if encoder not in ENCODERS:
        problems.append(f"--encoder: {encoder!r} not allowed; allowed: {', '.join(ENCODERS)}")
    if not 0 < val_fraction < 0.5:
        problems.append(f"--val-fraction: must lie in (0, 0.5), got {val_fraction}")
    if out.exists():
        problems.append(f"--out: {out} already exists; remove it or choose another folder")
    if problems:
        raise SpecError("modexp prepare", problems)
    return _Checked(scanned, kind, vocab, tok)


def prepare(inputs: list[str], out: str | Path, tokenizer: str = "bytes", text_field: str = "text",
            val_fraction: float = 0.01, progress=None, encoder: str = "auto") -> PrepareReport:
    """Tokenise the inputs into the token folder `out` (see the module docstring)."""
    out, t0 = Path(out), time.time()
    checked = _check(inputs, out, val_fraction, tokenizer, encoder)
    progress = progress or _NoProgress()
    notes = list(checked.inputs.notes)
    try:
        with TempFolder(out) as tmp:
            notes += tmp.notes
            meta = _prepare_into(tmp.path, checked, tokenizer, text_field, val_fraction, encoder,
                                 progress, notes)
            tmp.commit()
    except InputError as e:
        raise SpecError("modexp prepare", [str(e)]) from None
    return PrepareReport(out, meta, time.time() - t0, notes)


def _prepare_into(tmp: Path, checked: _Checked, tokenizer: str, text_field: str, val_fraction: float,
                  encoder: str, progress, notes: list[str]) -> dict:
    inputs, total = checked.inputs, checked.inputs.total or None
    tok = checked.tok
    if checked.kind == "bpe":
        tok = _train(inputs, text_field, val_fraction, checked.vocab, progress)
    if tok is not None:
        tok.save(str(tmp / "tokenizer.json"))
        vocab = tokenizer_vocab(tok)
        enc, why = pick_encoder(tok, separator(tok), vocab, encoder)
        if why and encoder == "tiktoken":
            raise SpecError("--encoder", [f"--encoder: tiktoken: {why}"])
    else:
        enc, why = BytesEncoder(), None
    dtype = "uint16" if enc.vocab <= 1 << 16 else "uint32"
    try:
        counts, files = _encode(tmp, inputs, text_field, val_fraction, enc, dtype, tokenizer, progress, total)
    except EncoderMismatch as e:
        notes.append(f"{e}: encoded with tokenizers instead (identical ids by definition)")
        enc = pick_encoder(tok, enc.sep, enc.vocab, "tokenizers")[0]
        counts, files = _encode(tmp, inputs, text_field, val_fraction, enc, dtype, tokenizer, progress, total)
    progress.done()
    n_docs, n_pieces, n_chars, skipped = counts
    notes += skipped
    if files["train.bin"]["tokens"] == 0 or files["val.bin"]["tokens"] == 0:
        raise InputError(f"the corpus is too small to split: {n_pieces} piece(s) of up to 64 Ki "
                         f"characters; the validation or training split is empty "
                         f"(raise --val-fraction or add text)")
    if tok is not None:
        files["tokenizer.json"] = {"sha256": file_sha256(tmp / "tokenizer.json")}
    meta = {"format": "modexp-tokens/1", "vocab_size": enc.vocab, "dtype": dtype,
            "tokenizer": "bytes" if tok is None else ("bpe" if checked.kind == "bpe" else tokenizer),
            "separator": enc.sep, "train_tokens": files["train.bin"]["tokens"],
            "val_tokens": files["val.bin"]["tokens"], "documents": n_docs, "pieces": n_pieces,
            "characters": n_chars, "input_bytes": inputs.total,
            "inputs": [spec for spec, _ in inputs.items], "text_field": text_field,
            "val_fraction": val_fraction,
            "split": "piece i (document or 64 Ki-char piece) is validation iff "
                     "frac((i+1)*0.6180339887) < val_fraction",
            "encoder": enc.name + (f" (not tiktoken: {why})" if why else ""),
            "special_tokens": "special-token text in the inputs is encoded as text; the "
                              "separator is only put before each document", "files": files}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def _train(inputs: Inputs, text_field: str, val_fraction: float, vocab: int, progress):
    """A BPE tokenizer learnt from the training pieces (progress: input bytes read, then the
    merges, which have no estimate)."""
    progress.phase("reading for BPE", inputs.total or None)

    def texts():
        done = 0
        for batch, _, vals, nbytes in _prefetched(_batches(documents(inputs, text_field), val_fraction)):
            yield [t for t, v in zip(batch, vals) if not v]
            progress.advance(nbytes)
            done += nbytes
        progress.advance(max(inputs.total - done, 0))  # skipped binaries, gzip trailers
        progress.phase("learning BPE merges", None)

    return _interruptible(lambda: train_bpe(texts(), vocab))


def _interruptible(fn):
    """fn() run in a thread while this one waits in short slices: the BPE trainer's merges run
    in Rust, which sees no Ctrl-C, so the wait is what Ctrl-C interrupts (the abandoned thread
    writes nothing; the temp folder goes with the interrupt)."""
    box: dict = {}

    def work():
        try:
            box["value"] = fn()
        except BaseException as e:  # re-raised in the caller
            box["error"] = e

    t = threading.Thread(target=work, daemon=True)
    t.start()
    while t.is_alive():
        t.join(0.1)
    if "error" in box:
        raise box["error"]
    return box["value"]


def _encode(tmp: Path, inputs: Inputs, text_field: str, val_fraction: float, enc, dtype: str,
            tokenizer: str, progress, total):
    """One encoding pass into fresh train.bin and val.bin: (counts, files)."""
    writers = {s: _BinWriter(tmp / f"{s}.bin", dtype) for s in ("train", "val")}
    progress.phase("encoding", total)
    n_docs = n_pieces = n_chars = done = 0
    skipped: list[str] = []
    try:
        for texts, news, vals, nbytes in _prefetched(_batches(documents(inputs, text_field, skipped),
                                                              val_fraction)):
            encoded = enc.encode(texts)
            top = max((int(ids.max()) for ids in encoded if len(ids)), default=-1)
            if top >= enc.vocab:
                raise InputError(f"{tokenizer}: encoded a token id {top} >= its vocabulary "
                                 f"({enc.vocab}): the tokenizer emits ids it does not list")
            for new, val, ids in zip(news, vals, encoded):
                if new and enc.sep is not None:
                    ids = np.concatenate([[enc.sep], ids])
                writers["val" if val else "train"].write(ids)
            n_docs, n_pieces, n_chars = n_docs + sum(news), n_pieces + len(texts), n_chars + sum(map(len, texts))
            progress.advance(nbytes)
            done += nbytes
        progress.advance(max(inputs.total - done, 0))  # skipped binaries, gzip trailers
    finally:
        files = {f"{s}.bin": w.close() for s, w in writers.items()}
    return (n_docs, n_pieces, n_chars, skipped), files


class _NoProgress:
    def phase(self, name: str, total: int | None) -> None: ...
    def advance(self, n: int) -> None: ...
    def done(self) -> None: ...
