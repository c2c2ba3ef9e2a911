"""Documents for `modexp prepare`, streamed from text files, folders, JSONL, Parquet or the Hub.

The inputs are scanned once (`scan_inputs`): every problem found before anything is written,
one line each, and the list of regular files both passes of prepare read. FIFOs, sockets,
devices and broken links are skipped with a note (a FIFO would block its reader forever);
hidden files are skipped silently; so are binary files (a NUL in the first 8 KiB, git's rule),
counted in one note.

Every reader yields `Piece`s: a long document is cut at line boundaries into pieces of at most
PIECE_CHARS, so memory never holds more than one read chunk and one piece per reader (plus one
Parquet record batch or one JSON line), whatever the size of the corpus or of one file. A
piece's `new_doc` is True for a document's first piece (where the tokenizer's separator goes)
and its `nbytes` counts the input bytes read since the previous piece (progress and ETA).
A bad input (truncated or corrupt gzip, a line that is not JSON, a lone surrogate, a Parquet
column that is not text) is an InputError naming the file and the line or row.
"""

from __future__ import annotations

import codecs
import gzip
import io
import json
import os
import re
import stat
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

PIECE_CHARS = 1 << 16  # 64 Ki characters: also the unit of the train/validation split
READ_BYTES = 1 << 20  # a text file is read 1 MiB at a time
_BINARY_PROBE = 8192  # a NUL in the first 8 KiB marks a binary file (git's heuristic)
HF_PREFIX = "hf:"
_ESCAPED_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")  # how a JSON line spells a surrogate


class InputError(Exception):
    """An input of `modexp prepare` is missing, unreadable or needs a missing extra."""


class Piece(NamedTuple):
    """Up to PIECE_CHARS characters of one document."""

    text: str
    new_doc: bool  # the document's first piece
    nbytes: int  # input bytes read since the previous piece


@dataclass
class Inputs:
    """The inputs of one prepare, scanned once."""

    items: list[tuple[str, list[Path]]]  # (input as given, its regular files); hf: inputs: []
    total: int = 0  # bytes of all local files
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def kind(path: Path) -> str:
    """jsonl | parquet | text, from a file's name."""
    name = path.name.lower()
    if name.endswith((".jsonl", ".jsonl.gz", ".ndjson")):
        return "jsonl"
    if name.endswith(".parquet"):
        return "parquet"
    return "text"


_NOT_REGULAR = ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"),
                (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def _what(mode: int) -> str:
    return next((what for test, what in _NOT_REGULAR if test(mode)), "not a regular file")


def scan_inputs(inputs: list[str], out: Path | None = None) -> Inputs:
    """Each input's regular files (sorted, recursive, hidden ones skipped), their bytes, and
    every problem: missing or unreadable inputs, missing extras, an --out inside an input."""
    scanned = Inputs([])
    for spec in inputs:
        if spec.startswith(HF_PREFIX):
            try:
                import datasets  # noqa: F401
            except ImportError:
                scanned.problems.append(f"{spec}: reading a Hugging Face dataset needs the "
                                        "`datasets` extra (pip install 'modexp[datasets]')")
            scanned.items.append((spec, []))
            continue
        path = Path(spec)
        if not path.exists():
            scanned.problems.append(f"{spec}: no such file or folder (a Hub dataset is written hf:NAME)")
            continue
        if out is not None and _inside(out, path):
            scanned.problems.append(f"--out: {out} lies inside the input {spec}: prepare would read "
                                    "its own output; choose a folder outside the inputs")
        mode = path.stat().st_mode
        if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
            scanned.problems.append(f"{spec}: {_what(mode)}, not a regular file or folder; "
                                    "give text, JSONL or Parquet files, or folders of them")
            continue
        files = _regular_files(path, scanned)
        if not files and path.is_dir():
            scanned.problems.append(f"{spec}: the folder holds no files to read")
        if any(kind(f) == "parquet" for f in files):
            try:
                import pyarrow.parquet  # noqa: F401
            except ImportError:
                scanned.problems.append(f"{spec}: reading .parquet needs pyarrow (pip install 'modexp[data]')")
        scanned.items.append((spec, files))
    return scanned


def _inside(out: Path, path: Path) -> bool:
    out, path = out.resolve(), path.resolve()
    return path == out or path in out.parents


def _regular_files(path: Path, scanned: Inputs) -> list[Path]:
    """A file, or a folder's files recursively in sorted path order, hidden ones skipped;
    non-regular files noted, unreadable ones and folders that cannot be listed are problems."""
    if not path.is_dir():
        return [path] if _readable(path, scanned) else []
    files = []

    def cannot_list(e: OSError) -> None:
        scanned.problems.append(f"{e.filename}: cannot list the folder ({e.strerror})")

    for dirpath, dirnames, filenames in os.walk(path, onerror=cannot_list):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        files += [Path(dirpath, f) for f in sorted(filenames)
                  if not f.startswith(".") and _readable(Path(dirpath, f), scanned)]
    return files


def _readable(f: Path, scanned: Inputs) -> bool:
    """Whether to read f: a regular file we may read (noted or a problem otherwise)."""
    try:
        st = f.stat()
    except OSError as e:
        scanned.notes.append(f"skipped {f}: {'a broken symbolic link' if f.is_symlink() else e.strerror}")
        return False
    if not stat.S_ISREG(st.st_mode):
        scanned.notes.append(f"skipped {f}: {_what(st.st_mode)}, not a regular file")
        return False
    if not os.access(f, os.R_OK):
        scanned.problems.append(f"{f}: not readable (permission denied)")
        return False
    scanned.total += st.st_size
    return True


def documents(inputs: Inputs, text_field: str, notes: list[str] | None = None) -> Iterator[Piece]:
    """Every input's documents in order, as pieces; `notes` collects files skipped on the way
    (binary ones, and files replaced by a non-regular one since the scan)."""
    notes = [] if notes is None else notes
    binary: list[Path] = []
    for spec, files in inputs.items:
        if spec.startswith(HF_PREFIX):
            yield from _pieces_of(_hub_texts(spec[len(HF_PREFIX):], text_field))
            continue
        for f in files:
            fh = _open_regular(f, notes)
            if fh is None:
                continue
            with fh:
                if kind(f) == "text":
                    pieces = _text_pieces(f, fh)
                    first = next(pieces, None)
                    if first is None:
                        binary.append(f)
                        continue
                    yield first
                    yield from pieces
                elif kind(f) == "jsonl":
                    yield from _pieces_of(_jsonl_texts(f, fh, text_field))
                else:
                    yield from _pieces_of(_parquet_texts(f, fh, text_field))
    if binary:
        shown = ", ".join(str(b) for b in binary[:3]) + (", ..." if len(binary) > 3 else "")
        notes.append(f"skipped {len(binary)} binary file(s) (a NUL byte in the first 8 KiB): {shown}")


def _open_regular(f: Path, notes: list[str]):
    """f opened for reading, or None (noted) if it is no longer a regular file: opened
    non-blocking, so a FIFO put in its place cannot block prepare."""
    fd = os.open(f, os.O_RDONLY | os.O_NONBLOCK)
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        notes.append(f"skipped {f}: {_what(mode)}, not a regular file")
        return None
    return os.fdopen(fd, "rb")


def _pieces_of(texts: Iterator[tuple[str, int]]) -> Iterator[Piece]:
    """Cut each (document, input bytes) into pieces of at most PIECE_CHARS at line ends
    (mid-line if none)."""
    for text, nbytes in texts:
        start, first = 0, True
        while start < len(text) or first:
            end = _cut(text, start, len(text))
            yield Piece(text[start:end], first, nbytes if first else 0)
            start, first = end, False


def _cut(text: str, start: int, stop: int) -> int:
    """Where the piece starting at `start` ends, given the text known up to `stop`: at most
    PIECE_CHARS on, after the last line end within that reach (if any)."""
    end = min(start + PIECE_CHARS, stop)
    if end < stop:
        nl = text.rfind("\n", start, end)
        end = nl + 1 if nl >= start else end
    return end


def _text_pieces(path: Path, f) -> Iterator[Piece]:
    """One document: the file's text (UTF-8, bad bytes replaced), read READ_BYTES at a time and
    cut into exactly the pieces _pieces_of cuts the whole text into; nothing for a binary file."""
    head = f.read(_BINARY_PROBE)
    if b"\0" in head:
        return
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    buf, start, first, pending = decoder.decode(head), 0, True, len(head)
    while True:
        chunk = f.read(READ_BYTES)
        buf = buf[start:] + decoder.decode(chunk, final=not chunk)
        start, pending = 0, pending + len(chunk)
        while len(buf) - start > PIECE_CHARS:  # more than a piece left, whatever follows
            end = _cut(buf, start, len(buf))
            yield Piece(buf[start:end], first, pending)
            start, first, pending = end, False, 0
        if not chunk:
            break
    if first or start < len(buf):
        yield Piece(buf[start:], first, pending)


def _jsonl_texts(path: Path, raw, field: str) -> Iterator[tuple[str, int]]:
    """The text field of each JSON line, with the input bytes read for it; a line without it,
    or a gzip stream that is cut short or corrupt, is an InputError naming the file and line."""
    gz = path.name.lower().endswith(".gz")
    stream = gzip.GzipFile(fileobj=raw, mode="rb") if gz else raw
    lines = io.TextIOWrapper(stream, encoding="utf-8", errors="replace")
    i, last = 0, 0
    while True:
        try:
            line = lines.readline()
        except (EOFError, gzip.BadGzipFile, zlib.error) as e:
            where = f"after line {i}" if i else "at its start"
            raise InputError(f"{path}: {_gzip_problem(e)} {where}") from None
        if not line:
            return
        i += 1
        if not line.strip():
            continue
        try:
            text = json.loads(line)[field]
        except (json.JSONDecodeError, KeyError, TypeError, IndexError):
            raise InputError(f"{path}:{i}: not a JSON object with a {field!r} field "
                             "(--text-field names it)") from None
        if not isinstance(text, str):
            raise InputError(f"{path}:{i}: field {field!r} is not a string")
        if _ESCAPED_SURROGATE.search(line):
            _check_unicode(text, f"{path}:{i}: field {field!r}")
        pos = raw.tell()
        yield text, pos - last
        last = pos


def _gzip_problem(e: Exception) -> str:
    if isinstance(e, EOFError):
        return "the gzip stream ends early (a truncated download or copy)"
    if isinstance(e, gzip.BadGzipFile):
        return f"not a gzip file ({e})"
    return f"corrupt gzip data ({e})"


def _check_unicode(text: str, where: str) -> None:
    """InputError if text holds a lone surrogate (JSON can spell one; UTF-8 cannot encode it)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InputError(f"{where} holds a lone surrogate (\\u{ord(text[e.start]):04x} at character "
                         f"{e.start}): not Unicode text; remove it or complete its pair") from None


def _parquet_texts(path: Path, f, field: str) -> Iterator[tuple[str, int]]:
    """The text column, read one record batch at a time (memory: one batch); a column that
    is not of strings, or a file pyarrow cannot read, is an InputError naming the file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(f)
    except Exception as e:  # pyarrow raises several types for a corrupt file
        raise InputError(f"{path}: not a readable Parquet file ({e})") from None
    names = pf.schema_arrow.names
    if field not in names:
        raise InputError(f"{path}: no column {field!r}; columns: {', '.join(names)} "
                         "(--text-field names it)")
    t = pf.schema_arrow.field(field).type
    value = t.value_type if pa.types.is_dictionary(t) else t
    if not (pa.types.is_string(value) or pa.types.is_large_string(value)
            or getattr(pa.types, "is_string_view", lambda _: False)(value)):
        raise InputError(f"{path}: column {field!r} holds {t}, not text (strings); "
                         "--text-field names the text column")
    size, rows, row = path.stat().st_size, max(pf.metadata.num_rows, 1), 0
    batches = pf.iter_batches(batch_size=1024, columns=[field])
    while True:
        try:
            batch = next(batches, None)
            texts = None if batch is None else batch.column(0).to_pylist()
        except Exception as e:  # corrupt pages, invalid UTF-8: pyarrow's own types
            raise InputError(f"{path}: rows from {row}: cannot be read ({type(e).__name__}: {e})") from None
        if texts is None:
            return
        share = size * len(texts) // rows
        for t in texts:
            if t:
                yield t, share
                share = 0
        row += len(texts)


def _hub_texts(name: str, field: str) -> Iterator[tuple[str, int]]:
    """A Hub dataset's train split, streamed (nothing downloaded in full): hf:NAME[:CONFIG]."""
    import datasets

    name, _, config = name.partition(":")
    try:
        ds = datasets.load_dataset(name, config or None, split="train", streaming=True)
    except Exception as e:  # offline, unknown name, gated: all surface here
        raise InputError(f"hf:{name}: cannot open the dataset ({type(e).__name__}: {e})") from None
    for i, row in enumerate(ds):
        if field not in row:
            raise InputError(f"hf:{name}: no field {field!r}; fields: {', '.join(row)}")
        text = row[field]
        if not isinstance(text, str):
            raise InputError(f"hf:{name}: row {i}: field {field!r} holds {type(text).__name__}, not text")
        _check_unicode(text, f"hf:{name}: row {i}: field {field!r}")
        yield text, 0
