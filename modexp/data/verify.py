"""A source's content hash, and a token folder checked against its own records, before a run.

`content_hashes` reads every file of a source once (sha256 of their concatenation, plus each
token file's own and the tokenizer.json's) and caches the result under the files' stat keys
(modexp/data/corpus.py: path, size, mtime, ctime, inode, device), so a sweep's later runs and
reruns read nothing, yet an edit that restores a file's size and mtime is rehashed: its ctime
has moved. `verified_hashes` adds the check against a prepared folder's meta.json: the sha256
it records for train.bin, val.bin and tokenizer.json must be the files' (a file swapped or
corrupted after `modexp prepare` is refused, naming it). Sizes and token counts are checked
when the source is resolved (corpus.py), without reading the files.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from modexp.cache import read_cache, write_cache
from modexp.data.corpus import TOKENIZER_FILE, Source, SourceError, stat_key

HASH_FILE = "data-sha256.json"  # modexp.cache: the files' stat keys -> their content hashes
_KEEP = 64  # cache entries kept (the newest sources)
_CHUNK = 1 << 20


def tokenizer_path(src: Source) -> Path | None:
    """The tokenizer.json a source decodes with, if it has one on disk."""
    tok = src.tokenizer
    return Path(tok) if tok not in (None, "bytes") and Path(tok).is_file() else None


def content_hashes(src: Source) -> dict:
    """{"sha256": the files' concatenation, "files": {name: sha256} (token files only),
    "tokenizer_sha256": the tokenizer.json's or None}, cached by the files' stat keys."""
    tok = tokenizer_path(src)
    per_file = src.token_bytes > 1
    stats = [stat_key(f) for f in src.files] + ([stat_key(tok)] if tok else []) + [per_file]
    key = hashlib.sha256(json.dumps(stats).encode()).hexdigest()
    known = read_cache(HASH_FILE)
    hit = known.get(key)
    if isinstance(hit, dict) and isinstance(hit.get("sha256"), str):
        return hit
    whole, files = hashlib.sha256(), {}
    for f in src.files:
        one = hashlib.sha256()
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(_CHUNK), b""):
                whole.update(chunk)
                one.update(chunk)
        if per_file:
            files[f.name] = one.hexdigest()
    out = {"sha256": whole.hexdigest(), "files": files,
           "tokenizer_sha256": file_sha256(tok) if tok else None}
    try:  # a cache, not a record: a read-only home only costs a rehash next time
        write_cache(HASH_FILE, dict(list({**known, key: out}.items())[-_KEEP:]))
    except OSError:
        pass
    return out


def verified_hashes(src: Source) -> dict:
    """content_hashes, after checking them against the sha256 a prepared folder's meta.json
    records for each of its files; SourceError naming the first file that differs."""
    hashes = content_hashes(src)
    records = (src.meta or {}).get("files")
    if not isinstance(records, dict):
        return hashes
    found = {**hashes["files"], TOKENIZER_FILE: hashes["tokenizer_sha256"]}
    folder = src.files[0].parent
    for name, rec in records.items():
        want = rec.get("sha256") if isinstance(rec, dict) else None
        if want is None or name not in found:
            continue
        if found[name] is None:
            raise SourceError(f"{folder / name}: missing, though meta.json records it "
                              f"(sha256 {want[:12]}...); restore it or prepare the folder anew")
        if found[name] != want:
            raise SourceError(f"{folder / name}: sha256 {found[name][:12]}... differs from the "
                              f"{want[:12]}... meta.json records: the file was changed, swapped "
                              "or copied in part after `modexp prepare`; copy the folder again "
                              "or prepare it anew")
    return hashes


def file_sha256(path: Path) -> str:
    """sha256 of one file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()
