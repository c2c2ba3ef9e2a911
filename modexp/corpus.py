"""Data sources resolved to files on disk, without torch (the planner needs their sizes).

- builtin:pystdlib: the running Python's standard library source (*.py), sorted by path,
  test folders and site-packages excluded; byte-level tokens, so tokens = bytes.
- a text file or a folder of text files (sorted, recursive): byte-level.
- a .bin file: uint16 tokens in nanoGPT's layout, tokens = bytes / 2.
Relative paths are resolved against the current folder, like results/.
"""

from __future__ import annotations

import hashlib
import os
import sysconfig
from dataclasses import dataclass
from pathlib import Path

BUILTIN = "builtin:pystdlib"
_SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}


class SourceError(Exception):
    """A data source is missing or empty."""


@dataclass(frozen=True)
class Source:
    """A resolved data source: its files, token width and token count."""

    name: str
    files: tuple[Path, ...]
    token_bytes: int  # 1 for byte-level text, 2 for uint16 .bin

    @property
    def n_tokens(self) -> int:
        """Tokens in the whole source (train + validation)."""
        return sum(f.stat().st_size for f in self.files) // self.token_bytes

    def read_bytes(self) -> bytes:
        """The whole source, files concatenated in order."""
        return b"".join(f.read_bytes() for f in self.files)

    def fingerprint(self) -> dict:
        """Size and sha256 of the content, recorded with every run."""
        h = hashlib.sha256()
        for f in self.files:
            h.update(f.read_bytes())
        return {"source": self.name, "files": len(self.files), "tokens": self.n_tokens,
                "sha256": h.hexdigest()}


def stdlib_files() -> list[Path]:
    """The stdlib's .py files in sorted path order, tests and site-packages excluded."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in _SKIP_DIRS]
        files += [Path(dirpath, f) for f in filenames if f.endswith(".py")]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def resolve_source(source: str) -> Source:
    """Resolve a spec's data.source to files; raise SourceError if missing or empty."""
    if source == BUILTIN:
        files = stdlib_files()
    elif source.startswith("builtin:"):
        raise SourceError(f"unknown builtin source {source!r}; allowed: {BUILTIN}")
    else:
        path = Path(source)
        if not path.exists():
            raise SourceError(f"{source}: no such file or folder")
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    src = Source(source, tuple(files), 2 if source.endswith(".bin") else 1)
    if src.n_tokens == 0:
        raise SourceError(f"{source}: the data source is empty")
    return src
