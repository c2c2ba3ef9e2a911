"""Checkpoints you can trust: checksummed, the last two kept while training, a corrupt one
never loaded; after the run, what train.keep keeps (`retire`).

Layout in a run folder: ckpt.pt (newest), ckpt.prev.pt (the one before) and ckpt.sha256.json,
the sha256 and step of each. A save streams torch.save into .ckpt.pt.tmp, hashing the bytes
on their way to the file (no in-memory copy of the checkpoint), fsyncs it, moves ckpt.pt to
ckpt.prev.pt, renames the temp file to ckpt.pt, then rewrites the manifest: a kill at any
point leaves at least one file whose hash the manifest lists. A load accepts only such a file
(or, for a folder written before manifests existed, one torch can read), newest first, its
hash taken by streaming the file and the file then memory-mapped (torch.load(mmap=True)) onto
the CPU: a 2.7B run's checkpoint is never held twice in host RAM, and tensors such as the RNG
states stay CPU tensors whatever device the run trains on; a
rejected file is renamed *.corrupt (kept for inspection, never promoted by a later save).
torch is imported only to save and load, so `modexp status` stays torch-free.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from modexp.files import read_json, write_json_atomic

CKPT_FILE, PREV_FILE, MANIFEST_FILE = "ckpt.pt", "ckpt.prev.pt", "ckpt.sha256.json"


class CheckpointError(Exception):
    """No checkpoint in a run folder can be loaded; the message says why for each file."""


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp")


class _HashingFile:
    """A write-only file that hashes what passes through it (what torch.save writes to)."""

    def __init__(self, f):
        self.f, self.sha = f, hashlib.sha256()

    def write(self, data) -> int:
        self.sha.update(data)
        return self.f.write(data)

    def flush(self) -> None:
        self.f.flush()


def _write_file(path: Path, state: dict) -> str:
    """torch.save state to path as it streams, fsynced; its sha256 (ENOSPC and friends
    surface here as OSError)."""
    import torch

    with open(path, "wb") as f:
        out = _HashingFile(f)
        torch.save(state, out)
        f.flush()
        os.fsync(f.fileno())
    return out.sha.hexdigest()


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file read `chunk` bytes at a time (never the whole file in memory)."""
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            sha.update(block)
    return sha.hexdigest()


def _manifest(run_dir: Path) -> dict | None:
    """The manifest, or None if absent or unreadable (then no file can be verified)."""
    try:
        obj = read_json(run_dir / MANIFEST_FILE)
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return obj if isinstance(obj, dict) else {}


def step_file(step: int) -> str:
    """The name a checkpoint kept by `train.keep: every:N` has: ckpt.step<step>.pt."""
    return f"ckpt.step{step}.pt"


def save(state: dict, path: Path, keep_every: int | None = None) -> None:
    """Atomically write a checkpoint, keep the previous one, record both checksums; with
    keep_every, a step that is a multiple of it also stays as ckpt.step<step>.pt (a hard
    link to the same bytes, listed in the manifest with its checksum)."""
    path = Path(path)
    tmp, prev = _tmp(path), path.with_name(PREV_FILE)
    try:
        sha = _write_file(tmp, state)
    except BaseException:
        tmp.unlink(missing_ok=True)  # never leave half a checkpoint behind (disk full, killed)
        raise
    old = _manifest(path.parent) or {}
    kept = old.get(path.name) if path.exists() else old.get(PREV_FILE)
    if path.exists():
        os.replace(path, prev)
    os.replace(tmp, path)
    entries = {path.name: {"sha256": sha, "step": state.get("step")}}
    if kept is not None and prev.exists():
        entries[PREV_FILE] = kept
    entries |= {k: v for k, v in old.items() if k.startswith("ckpt.step") and (path.parent / k).exists()}
    step = state.get("step")
    if keep_every and isinstance(step, int) and step % keep_every == 0:
        kept_as = path.with_name(step_file(step))
        kept_as.unlink(missing_ok=True)
        os.link(path, kept_as)
        entries[kept_as.name] = entries[path.name]
    write_json_atomic(path.parent / MANIFEST_FILE, entries)


def retire(run_dir: Path, keep: str) -> list[str]:
    """After a run is done, remove the checkpoints train.keep does not keep; their names.

    `last` and `every:N` remove ckpt.prev.pt (ckpt.pt is the final one), `none` every
    checkpoint and the manifest."""
    run_dir = Path(run_dir)
    names = [PREV_FILE] if keep != "none" else \
        [CKPT_FILE, PREV_FILE, MANIFEST_FILE, *(f.name for f in run_dir.glob("ckpt.step*.pt"))]
    gone = [n for n in names if (run_dir / n).exists()]
    for n in gone:
        (run_dir / n).unlink()
    manifest = _manifest(run_dir)
    if keep != "none" and manifest and PREV_FILE in manifest:
        write_json_atomic(run_dir / MANIFEST_FILE, {k: v for k, v in manifest.items() if k != PREV_FILE})
    return gone


def load(path: Path, device="cpu", weights_only: bool = False,
         set_aside: bool = True) -> tuple[dict | None, list[str]]:
    """(state of the newest good checkpoint or None, notes on every file passed over).

    `device`: torch.load's map_location; the trainer loads onto the CPU (memory-mapped) and
    copies into its modules, so the RNG states it restores stay CPU tensors.

    With set_aside, rejected files are renamed *.corrupt (the trainer does this under the
    run's lock; readers such as `modexp sample` leave the folder alone).
    """
    import torch

    path = Path(path)
    manifest = _manifest(path.parent)
    good = {e.get("sha256") for e in (manifest or {}).values() if isinstance(e, dict)}
    notes = []
    for f in (path, path.with_name(PREV_FILE)):
        if not f.exists():
            continue
        why = None
        if manifest is not None and file_sha256(f) not in good:
            why = "its sha256 does not match the recorded checksum (killed while saving, or corrupted)"
        else:
            try:
                state = torch.load(f, map_location=device, weights_only=weights_only, mmap=True)
                if not isinstance(state, dict) or "model" not in state or "step" not in state:
                    raise ValueError("not a modexp checkpoint")
            except Exception as e:  # truncated, garbage, empty: torch raises many kinds
                why = f"unreadable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'empty'})"
        if why is None:
            return state, notes
        notes.append(f"{f.name}: {why}" + (f"; kept as {f.name}.corrupt" if set_aside else ""))
        if set_aside:
            os.replace(f, f.with_name(f.name + ".corrupt"))
    return None, notes


def load_for_reading(run_dir: Path, device: str = "cpu") -> tuple[dict, list[str]]:
    """The newest good checkpoint of a run folder, for sample/bench; CheckpointError if none."""
    state, notes = load(Path(run_dir) / CKPT_FILE, device, weights_only=True, set_aside=False)
    if state is None:
        raise CheckpointError("; ".join(notes) or f"no {CKPT_FILE}")
    return state, notes


def has_checkpoint(run_dir: Path) -> bool:
    """True if the folder holds a checkpoint file (verified only when loaded)."""
    return any((Path(run_dir) / f).is_file() for f in (CKPT_FILE, PREV_FILE))


def clean_stale_temp(run_dir: Path) -> list[str]:
    """Remove temp files a killed writer left (call under the run's lock); their names."""
    gone = []
    for f in Path(run_dir).glob(".*.tmp"):
        f.unlink(missing_ok=True)
        gone.append(f.name)
    return gone
