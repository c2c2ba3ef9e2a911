"""modexp's small on-disk caches (data hashes, token-id maxima, matmul peaks): one folder, one
format (a JSON object of key -> value), written atomically. They are caches, not records:
a missing or broken file reads as empty, and the value is computed again."""

from __future__ import annotations

import json
import os
from pathlib import Path

CACHE_ENV = "MODEXP_CACHE"  # overrides the folder (tests, read-only homes)


def cache_dir() -> Path:
    """$MODEXP_CACHE, else $XDG_CACHE_HOME/modexp, else ~/.cache/modexp."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "modexp"


def read_cache(name: str) -> dict:
    """The cache file `name` as a dict; {} when it is missing or unreadable."""
    try:
        obj = json.loads((cache_dir() / name).read_text())
    except (OSError, ValueError):
        return {}
    return obj if isinstance(obj, dict) else {}


def write_cache(name: str, obj: dict, indent: int | None = None) -> None:
    """Replace the cache file `name` atomically (a temp file, then a rename); raises OSError."""
    path = cache_dir() / name
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=indent))
    os.replace(tmp, path)
