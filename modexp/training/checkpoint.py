"""Checkpoints you can trust: checksummed, the last two kept, a corrupt one never loaded.

Layout in a run folder: ckpt.pt (newest), ckpt.prev.pt (the one before) and ckpt.sha256.json,
the sha256 and step of each. A save writes .ckpt.pt.tmp (fsynced), moves ckpt.pt to
ckpt.prev.pt, renames the temp file to ckpt.pt, then rewrites the manifest: a kill at any
point leaves at least one file whose hash the manifest lists. A load accepts only such a file
(or, for a folder written before manifests existed, one torch can read), newest first; a
rejected file is renamed *.corrupt (kept for inspection, never promoted by a later save).
torch is imported only to save and load, so `modexp status` stays torch-free.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

from modexp.files import read_json, write_json_atomic

CKPT_FILE, PREV_FILE, MANIFEST_FILE = "ckpt.pt", "ckpt.prev.pt", "ckpt.sha256.json"


class CheckpointError(Exception):
    """No checkpoint in a run folder can be loaded; the message says why for each file."""


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp")


def _write_file(path: Path, data: bytes) -> None:
    """Write and fsync (ENOSPC and friends surface here as OSError)."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _manifest(run_dir: Path) -> dict | None:
    """The manifest, or None if absent or unreadable (then no file can be verified)."""
    try:
        obj = read_json(run_dir / MANIFEST_FILE)
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return obj if isinstance(obj, dict) else {}


def save(state: dict, path: Path) -> None:
    """Atomically write a checkpoint, keep the previous one, record both checksums."""
    import torch

    path = Path(path)
    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getvalue()
    tmp, prev = _tmp(path), path.with_name(PREV_FILE)
    try:
        _write_file(tmp, data)
    except BaseException:
        tmp.unlink(missing_ok=True)  # never leave half a checkpoint behind (disk full, killed)
        raise
    old = _manifest(path.parent) or {}
    kept = old.get(path.name) if path.exists() else old.get(PREV_FILE)
    if path.exists():
        os.replace(path, prev)
    os.replace(tmp, path)
    entries = {path.name: {"sha256": hashlib.sha256(data).hexdigest(), "step": state.get("step")}}
    if kept is not None and prev.exists():
        entries[PREV_FILE] = kept
    write_json_atomic(path.parent / MANIFEST_FILE, entries)


def load(path: Path, device="cpu", weights_only: bool = False,
         set_aside: bool = True) -> tuple[dict | None, list[str]]:
    """(state of the newest good checkpoint or None, notes on every file passed over).

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
        data = f.read_bytes()
        why = None
        if manifest is not None and hashlib.sha256(data).hexdigest() not in good:
            why = "its sha256 does not match the recorded checksum (killed while saving, or corrupted)"
        else:
            try:
                state = torch.load(io.BytesIO(data), map_location=device, weights_only=weights_only)
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
