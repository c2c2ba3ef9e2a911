"""Data sources resolved to files on disk, without torch (the planner needs their sizes).

- builtin:pystdlib: the running Python's standard library source (*.py), sorted by path,
  test folders and site-packages excluded; byte-level tokens, so tokens = bytes.
- a prepared token folder (`modexp prepare`: meta.json, train.bin, val.bin, tokenizer.json):
  vocabulary and dtype from meta.json, validation from val.bin.
- a .bin file, or a folder of .bin shards (nanoGPT's train.bin/val.bin, or llm.c/modded-nanogpt
  shards with their 256-int32 header): tokens of uint16, or uint32 when vocab_size > 65536
  (a header's version says which); shards named *val* are the validation split.
- any other file or folder: text, byte-level tokens (sorted, recursive).
Relative paths are resolved against the current folder, like results/.
"""

from __future__ import annotations

import json
import os
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from modexp.cache import read_cache, write_cache

BUILTIN = "builtin:pystdlib"
META_FILE = "meta.json"
_SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}
_LLMC_MAGIC, _LLMC_HEADER = 20240520, 256  # llm.c shard header: 256 int32, tokens follow


class SourceError(Exception):
    """A data source is missing, empty or inconsistent."""


@dataclass(frozen=True)
class Source:
    """A resolved data source: its files, token width and token count."""

    name: str
    files: tuple[Path, ...]  # every file: training ones, then val_files
    token_bytes: int  # 1 for byte-level text, 2 for uint16, 4 for uint32 tokens
    val_files: tuple[Path, ...] = ()  # the held-out files; empty: the tail val_fraction is held out
    vocab: int | None = None  # a prepared folder's vocabulary (meta.json)
    tokenizer: str | None = None  # "bytes", a tokenizer.json path, or None (bare token ids)
    meta: dict | None = None  # a prepared folder's meta.json

    @property
    def train_files(self) -> tuple[Path, ...]:
        """The files training windows come from."""
        return tuple(f for f in self.files if f not in self.val_files)

    @property
    def n_tokens(self) -> int:
        """Tokens in the whole source (train + validation)."""
        if self.token_bytes == 1:
            return sum(f.stat().st_size for f in self.files)
        return sum(len(token_map(f, self.token_bytes)) for f in self.files)

    def train_tokens(self, val_fraction: float) -> int:
        """Tokens of the training split (all but val_files, or all but the held-out tail)."""
        if self.val_files:
            return sum(len(token_map(f, self.token_bytes)) for f in self.train_files)
        n = self.n_tokens
        return n - val_tokens(n, val_fraction)


def val_tokens(n_tokens: int, val_fraction: float) -> int:
    """Held-out tokens at the end of a source without validation files (data/tokens.py splits
    there)."""
    return int(n_tokens * val_fraction)


def stdlib_files() -> list[Path]:
    """The stdlib's .py files in sorted path order, tests and site-packages excluded."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in _SKIP_DIRS]
        files += [Path(dirpath, f) for f in filenames if f.endswith(".py")]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def token_width(vocab: int | None) -> int:
    """Bytes per token of a bare .bin: uint16 when the vocabulary fits (nanoGPT), else uint32."""
    return 2 if vocab is None or vocab <= 1 << 16 else 4


def token_map(path: Path, token_bytes: int) -> np.ndarray:
    """A read-only memory map of a token file's ids (after an llm.c header, whose version sets
    the width: 1 -> uint16, 2 -> uint32)."""
    head = np.fromfile(path, dtype=np.int32, count=3)
    offset = 0
    if len(head) == 3 and head[0] == _LLMC_MAGIC:
        token_bytes, offset = {1: 2, 2: 4}.get(int(head[1]), token_bytes), _LLMC_HEADER * 4
    dtype = np.uint16 if token_bytes == 2 else np.uint32
    if (path.stat().st_size - offset) % token_bytes:
        raise SourceError(f"{path}: size is not a whole number of {dtype.__name__} tokens")
    if path.stat().st_size == offset:
        return np.zeros(0, dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset)


def read_meta(folder: Path) -> dict:
    """A prepared folder's meta.json; SourceError if unreadable."""
    try:
        meta = json.loads((folder / META_FILE).read_text())
        assert isinstance(meta["vocab_size"], int) and meta["dtype"] in ("uint16", "uint32")
    except (OSError, ValueError, KeyError, TypeError, AssertionError):
        raise SourceError(f"{folder / META_FILE}: not the meta.json of `modexp prepare` "
                          "(needs vocab_size and dtype uint16|uint32)") from None
    return meta


def is_prepared(source: str) -> bool:
    """Whether a source is a token folder with a meta.json (vocabulary from there)."""
    return (Path(source) / META_FILE).is_file()


def is_token_source(source: str) -> bool:
    """Whether a source holds token ids (a .bin, shards, a prepared folder) rather than text."""
    path = Path(source)
    if source.endswith(".bin"):
        return True
    return path.is_dir() and ((path / META_FILE).is_file() or any(path.glob("*.bin")))


def resolve_source(source: str, vocab: int | None = None) -> Source:
    """Resolve a spec's data.source to files (vocab: the spec's, sets a bare .bin's width);
    raise SourceError if missing or empty."""
    path = Path(source)
    if source == BUILTIN:
        src = Source(source, tuple(stdlib_files()), 1, tokenizer="bytes")
    elif source.startswith("builtin:"):
        raise SourceError(f"unknown builtin source {source!r}; allowed: {BUILTIN}")
    elif not path.exists():
        raise SourceError(f"{source}: no such file or folder")
    elif (path / META_FILE).is_file():
        src = _prepared(source, path)
    elif is_token_source(source):
        shards = sorted(path.glob("*.bin")) if path.is_dir() else [path]
        val = tuple(f for f in shards if "val" in f.name) if path.is_dir() else ()
        tok = path / "tokenizer.json"
        src = Source(source, tuple(f for f in shards if f not in val) + val, token_width(vocab),
                     val, tokenizer=str(tok) if tok.is_file() else None)
    else:
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        src = Source(source, tuple(files), 1, tokenizer="bytes")
    if src.n_tokens == 0:
        raise SourceError(f"{source}: the data source is empty")
    if src.val_files and len(src.val_files) == len(src.files):
        raise SourceError(f"{source}: every .bin is a validation shard (named *val*); none to train on")
    return src


def _prepared(source: str, folder: Path) -> Source:
    meta = read_meta(folder)
    files = (folder / "train.bin", folder / "val.bin")
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise SourceError(f"{source}: prepared folder without {', '.join(missing)}")
    tok = folder / "tokenizer.json"
    return Source(source, files, 2 if meta["dtype"] == "uint16" else 4, files[1:],
                  meta["vocab_size"], str(tok) if tok.is_file() else meta.get("tokenizer"), meta)


TOKEN_MAX_FILE = "token-max.json"  # modexp.cache: file fingerprint -> largest token id


def max_token(path: Path, token_bytes: int, chunk: int = 1 << 24) -> int:
    """The largest id in a token file: a chunked max over its memory map, cached on disk by
    (path, size, mtime) so a sweep's later runs and reruns do not read the file again."""
    st = path.stat()
    key = f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"
    cache = read_cache(TOKEN_MAX_FILE)
    if key in cache:
        return cache[key]
    ids = token_map(path, token_bytes)
    m = max((int(ids[i:i + chunk].max()) for i in range(0, len(ids), chunk)), default=-1)
    try:  # a cache, not a record: losing a race or a read-only home only costs a re-read
        write_cache(TOKEN_MAX_FILE, {**cache, key: m})
    except OSError:
        pass
    return m


def check_token_ids(src: Source, vocab: int) -> None:
    """SourceError naming the first token file with an id >= vocab (the model would index
    past its embedding mid-run)."""
    if src.token_bytes == 1:
        return
    for f in src.files:
        m = max_token(f, src.token_bytes)
        if m >= vocab:
            raise SourceError(f"{f}: token id {m} >= vocab_size {vocab} (ids must lie in "
                              f"0..{vocab - 1}; set data.vocab_size to the tokenizer's)")
