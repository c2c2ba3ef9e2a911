"""Documents for `modexp prepare`, streamed from text files, folders, JSONL, Parquet or the Hub.

Every reader yields (text, new_doc) pieces: a long document is cut at line boundaries into
pieces of at most PIECE_CHARS, so memory never holds more than one piece per reader (plus one
Parquet record batch), whatever the size of the corpus. new_doc is True for a document's
first piece (where the tokenizer's separator goes).
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterator
from pathlib import Path

PIECE_CHARS = 1 << 16  # 64 Ki characters: also the unit of the train/validation split
_BINARY_PROBE = 8192  # a NUL in the first 8 KiB marks a binary file (git's heuristic)
HF_PREFIX = "hf:"


class InputError(Exception):
    """An input of `modexp prepare` is missing, unreadable or needs a missing extra."""


def kind(path: Path) -> str:
    """jsonl | parquet | text, from a file's name."""
    name = path.name.lower()
    if name.endswith((".jsonl", ".jsonl.gz", ".ndjson")):
        return "jsonl"
    if name.endswith(".parquet"):
        return "parquet"
    return "text"


def check_inputs(inputs: list[str]) -> tuple[list[str], int]:
    """Problems with the inputs (one line each) and the bytes of all local files to read."""
    problems, total = [], 0
    for spec in inputs:
        if spec.startswith(HF_PREFIX):
            try:
                import datasets  # noqa: F401
            except ImportError:
                problems.append(f"{spec}: reading a Hugging Face dataset needs the `datasets` "
                                "extra (pip install 'modexp[datasets]')")
            continue
        path = Path(spec)
        if not path.exists():
            problems.append(f"{spec}: no such file or folder (a Hub dataset is written hf:NAME)")
            continue
        files = list(input_files(path))
        if not files:
            problems.append(f"{spec}: the folder holds no files")
        if any(kind(f) == "parquet" for f in files):
            try:
                import pyarrow.parquet  # noqa: F401
            except ImportError:
                problems.append(f"{spec}: reading .parquet needs pyarrow (pip install 'modexp[data]')")
        total += sum(f.stat().st_size for f in files)
    return problems, total


def input_files(path: Path) -> Iterator[Path]:
    """A file, or a folder's files recursively in sorted path order, hidden ones skipped."""
    if path.is_file():
        yield path
        return
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in sorted(filenames):
            if not f.startswith("."):
                yield Path(dirpath, f)


def documents(inputs: list[str], text_field: str, on_bytes=None) -> Iterator[tuple[str, bool]]:
    """Every input's documents in order, as (piece, new_doc); on_bytes(n) counts input read."""
    on_bytes = on_bytes or (lambda n: None)
    for spec in inputs:
        if spec.startswith(HF_PREFIX):
            yield from _pieces_of(_hub_texts(spec[len(HF_PREFIX):], text_field))
            continue
        for f in input_files(Path(spec)):
            reader = {"jsonl": _jsonl_texts, "parquet": _parquet_texts, "text": _text_file}[kind(f)]
            texts = reader(f, text_field) if reader is not _text_file else reader(f)
            yield from _pieces_of(texts)
            on_bytes(f.stat().st_size)


def _pieces_of(texts: Iterator[str]) -> Iterator[tuple[str, bool]]:
    """Cut each document into pieces of at most PIECE_CHARS at line ends (mid-line if none)."""
    for text in texts:
        start, first = 0, True
        while start < len(text) or first:
            end = min(start + PIECE_CHARS, len(text))
            if end < len(text):
                nl = text.rfind("\n", start, end)
                end = nl + 1 if nl >= start else end
            yield text[start:end], first
            start, first = end, False


def _text_file(path: Path) -> Iterator[str]:
    """One document: the file's text (UTF-8, bad bytes replaced); binary files are skipped."""
    with open(path, "rb") as f:
        head = f.read(_BINARY_PROBE)
        if b"\0" in head:
            return
        data = head + f.read()
    yield data.decode("utf-8", errors="replace")


def _jsonl_texts(path: Path, field: str) -> Iterator[str]:
    """The text field of each JSON line; a line without it is an InputError naming the line."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                text = json.loads(line)[field]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise InputError(f"{path}:{i}: not a JSON object with a {field!r} field "
                                 "(--text-field names it)") from None
            if not isinstance(text, str):
                raise InputError(f"{path}:{i}: field {field!r} is not a string")
            yield text


def _parquet_texts(path: Path, field: str) -> Iterator[str]:
    """The text column, read one record batch at a time (memory: one batch)."""
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a corrupt file
        raise InputError(f"{path}: not a readable Parquet file ({e})") from None
    if field not in pf.schema_arrow.names:
        raise InputError(f"{path}: no column {field!r}; columns: {', '.join(pf.schema_arrow.names)} "
                         "(--text-field names it)")
    for batch in pf.iter_batches(batch_size=1024, columns=[field]):
        yield from (t for t in batch.column(0).to_pylist() if t)


def _hub_texts(name: str, field: str) -> Iterator[str]:
    """A Hub dataset's train split, streamed (nothing downloaded in full): hf:NAME[:CONFIG]."""
    import datasets

    name, _, config = name.partition(":")
    try:
        ds = datasets.load_dataset(name, config or None, split="train", streaming=True)
    except Exception as e:  # offline, unknown name, gated: all surface here
        raise InputError(f"hf:{name}: cannot open the dataset ({type(e).__name__}: {e})") from None
    for row in ds:
        if field not in row:
            raise InputError(f"hf:{name}: no field {field!r}; fields: {', '.join(row)}")
        yield row[field]
