"""Data sources resolved to files on disk, without torch (the planner needs their sizes).

- builtin:pystdlib: the running Python's standard library source (*.py), sorted by path,
  test folders and site-packages excluded; byte-level tokens, so tokens = bytes.
- a prepared token folder (`modexp prepare`: meta.json, train.bin, val.bin, tokenizer.json):
  vocabulary and dtype from meta.json, validation from val.bin. The files must agree with the
  sizes and token counts meta.json records (checked here, by their sizes: a partly copied
  train.bin is refused); their sha256 is checked before a run starts (modexp/data/verify.py).
- a .bin file, or a folder of .bin shards (nanoGPT's train.bin/val.bin, or llm.c/modded-nanogpt
  shards with their 256-int32 header): tokens of uint16, or uint32 when vocab_size > 65536
  (a header's version says which, and its token count must match the file's size); shards
  named *val* are the validation split.
- any other file or folder: text, byte-level tokens (sorted, recursive).
A spec's relative paths are resolved against the spec's folder when the spec is read
(modexp/spec/config.py, DataConfig.source); here a path is taken as given.
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
TOKENIZER_FILE = "tokenizer.json"
_SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}
_LLMC_MAGIC, _LLMC_HEADER = 20240520, 256  # llm.c shard header: 256 int32, tokens follow
_LLMC_WIDTH = {1: 2, 2: 4}  # header version -> bytes per token


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
    """A read-only memory map of a token file's ids. After an llm.c header (magic 20240520)
    its version sets the width (1 -> uint16, 2 -> uint32) and its third int32 the token count,
    which must match the file's size: a shard cut short (or grown) is a SourceError."""
    size = path.stat().st_size
    head = np.fromfile(path, dtype=np.int32, count=3)
    offset = 0
    if len(head) == 3 and head[0] == _LLMC_MAGIC:
        if int(head[1]) not in _LLMC_WIDTH:
            raise SourceError(f"{path}: llm.c header version {int(head[1])} is unknown "
                              "(allowed: 1 for uint16 tokens, 2 for uint32)")
        token_bytes, offset = _LLMC_WIDTH[int(head[1])], _LLMC_HEADER * 4
        held = (size - offset) / token_bytes
        if size < offset or held != int(head[2]):
            raise SourceError(f"{path}: its llm.c header says {int(head[2]):,} tokens, the file "
                              f"holds {_count(max(held, 0))} ({size:,} bytes): a shard cut short "
                              "or altered; copy it again")
    dtype = np.uint16 if token_bytes == 2 else np.uint32
    if (size - offset) % token_bytes:
        raise SourceError(f"{path}: size is not a whole number of {dtype.__name__} tokens")
    if size == offset:
        return np.zeros(0, dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset)


def _count(tokens: float) -> str:
    """A token count as held by a file: whole, or with the fraction a cut-off file leaves."""
    return f"{tokens:,.0f}" if tokens == int(tokens) else f"{tokens:,.1f}"


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
    raise SourceError if missing, empty or disagreeing with its own records."""
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
        tok = path / TOKENIZER_FILE
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
    width = 2 if meta["dtype"] == "uint16" else 4
    _check_sizes(folder, meta, files, width)
    tok = folder / TOKENIZER_FILE
    byte_level = meta.get("tokenizer") == "bytes"
    return Source(source, files, width, files[1:], meta["vocab_size"],
                  str(tok) if tok.is_file() else ("bytes" if byte_level else None), meta)


def _check_sizes(folder: Path, meta: dict, files: tuple[Path, ...], width: int) -> None:
    """Each .bin's size against the token counts meta.json records for it (files.<name>.tokens,
    and train_tokens / val_tokens): a file cut short by a copy, or grown, is refused."""
    records = meta.get("files") if isinstance(meta.get("files"), dict) else {}
    for f in files:
        claims = {n for n in ((records.get(f.name) or {}).get("tokens"),
                              meta.get(f"{f.stem}_tokens")) if isinstance(n, int)}
        held = f.stat().st_size / width
        for n in sorted(claims):
            if held != n:
                raise SourceError(f"{f}: meta.json records {n:,} tokens ({n * width:,} bytes), "
                                  f"the file holds {_count(held)} ({f.stat().st_size:,} bytes): "
                                  f"a partial copy or an edit; copy {folder} again or prepare it anew")


def stat_key(path: Path) -> list:
    """What identifies a file's content for modexp's caches without reading it: its resolved
    path, size, mtime, ctime, inode and device. An edit that restores the size and mtime
    (os.utime) still moves the ctime, which no user call can set back, and a replacement has
    a new inode, so a cached value is never served for changed content."""
    st = path.stat()
    return [str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


TOKEN_MAX_FILE = "token-max.json"  # modexp.cache: file stat key -> largest token id


def max_token(path: Path, token_bytes: int, chunk: int = 1 << 24) -> int:
    """The largest id in a token file: a chunked max over its memory map, cached on disk by
    the file's stat_key so a sweep's later runs and reruns do not read the file again."""
    key = json.dumps(stat_key(path))
    cache = read_cache(TOKEN_MAX_FILE)
    if key in cache:
        return cache[key]
    ids = token_map(path, token_bytes)
    m = max((int(ids[i:i + chunk].max()) for i in range(0, len(ids), chunk)), default=-1)
    try:  # a cache, not a record: losing a race or a read-only home only costs a re-read
        write_cache(TOKEN_MAX_FILE, dict(list({**cache, key: m}.items())[-256:]))
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
