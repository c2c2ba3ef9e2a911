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

Sharded (train.parallel: fsdp over several processes): a folder per checkpoint, written by
torch.distributed.checkpoint. ckpt.dcp/ (newest) and ckpt.prev.dcp/ hold every rank's shard
file (__<rank>_0.distcp), rank 0's .metadata (which shard holds which slice of which tensor)
and rank 0's trainer.pt (step, schedulers, RNG states, last evaluation). Every file is hashed
as it streams to disk (a writer whose streams hash what passes through); rank 0 gathers the
hashes and records them in the same manifest, `"ckpt.dcp": {"files": {name: sha256}, "step"}`.
A save writes .ckpt.dcp.tmp/, then rank 0 moves ckpt.dcp/ to ckpt.prev.dcp/, the temp folder
to ckpt.dcp/ and rewrites the manifest: the same order, so the same guarantee, as ckpt.pt. A
load accepts a folder whose files hash to a manifest entry's, newest first (a rejected folder
becomes *.corrupt). `train.keep: every:N` keeps ckpt.step<N>.dcp/ (hard links). Readers
(`modexp sample`, bench) load the model's full weights from a folder in one process
(`read_sharded`), so a finished FSDP run needs no consolidated copy.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import warnings
from contextlib import contextmanager
from pathlib import Path

from modexp.files import read_json, write_json_atomic

CKPT_FILE, PREV_FILE, MANIFEST_FILE = "ckpt.pt", "ckpt.prev.pt", "ckpt.sha256.json"
DCP_DIR, DCP_PREV, TRAINER_FILE = "ckpt.dcp", "ckpt.prev.dcp", "trainer.pt"


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


def step_file(step: int, sharded: bool = False) -> str:
    """The name a checkpoint kept by `train.keep: every:N` has: ckpt.step<step>.pt, or the
    folder ckpt.step<step>.dcp when sharded."""
    return f"ckpt.step{step}.{'dcp' if sharded else 'pt'}"


def save(state: dict, path: Path, keep_every: int | None = None) -> None:
    """Atomically write a checkpoint, keep the previous one, record both checksums; with
    keep_every, a step that is a multiple of it also stays as ckpt.step<step>.pt (a hard
    link to the same bytes, listed in the manifest with its checksum)."""
    path = Path(path)
    tmp = _tmp(path)
    try:
        sha = _write_file(tmp, state)
    except BaseException:
        tmp.unlink(missing_ok=True)  # never leave half a checkpoint behind (disk full, killed)
        raise
    _promote(tmp, path, path.with_name(PREV_FILE), {"sha256": sha, "step": state.get("step")},
             step_file(state.get("step")), keep_every)


def _promote(tmp: Path, path: Path, prev: Path, entry: dict, kept_name: str,
             keep_every: int | None) -> None:
    """Move path to prev and the finished tmp to path (a file or a folder), then record entry
    (its checksums and step) in the manifest, with prev's and the kept steps' entries."""
    old = _manifest(path.parent) or {}
    kept = old.get(path.name) if path.exists() else old.get(prev.name)
    if path.exists():
        if prev.is_dir():  # os.replace moves a folder only onto a missing or empty one
            shutil.rmtree(prev)
        os.replace(path, prev)
    os.replace(tmp, path)
    entries = {path.name: entry}
    if kept is not None and prev.exists():
        entries[prev.name] = kept
    entries |= {k: v for k, v in old.items() if k.startswith("ckpt.step") and (path.parent / k).exists()}
    step = entry.get("step")
    if keep_every and isinstance(step, int) and step % keep_every == 0:
        kept_as = path.with_name(kept_name)
        _remove(kept_as)
        _link(path, kept_as)
        entries[kept_as.name] = entry
    write_json_atomic(path.parent / MANIFEST_FILE, entries)


def _link(src: Path, dst: Path) -> None:
    """Hard-link a file, or every file of a folder into a new folder (the same bytes)."""
    if not src.is_dir():
        os.link(src, dst)
        return
    dst.mkdir()
    for f in src.iterdir():
        os.link(f, dst / f.name)


def _remove(path: Path) -> None:
    """Remove a file or a folder if it is there."""
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def retire(run_dir: Path, keep: str) -> list[str]:
    """After a run is done, remove the checkpoints train.keep does not keep; their names.

    `last` and `every:N` remove the previous one (ckpt.prev.pt, ckpt.prev.dcp/: ckpt.pt or
    ckpt.dcp/ is the final one), `none` every checkpoint and the manifest."""
    run_dir = Path(run_dir)
    names = [PREV_FILE, DCP_PREV] if keep != "none" else \
        [CKPT_FILE, PREV_FILE, DCP_DIR, DCP_PREV, MANIFEST_FILE,
         *sorted(f.name for f in run_dir.glob("ckpt.step*"))]
    gone = [n for n in names if (run_dir / n).exists()]
    for n in gone:
        _remove(run_dir / n)
    manifest = _manifest(run_dir)
    if keep != "none" and manifest and set(manifest) & {PREV_FILE, DCP_PREV}:
        write_json_atomic(run_dir / MANIFEST_FILE,
                          {k: v for k, v in manifest.items() if k not in (PREV_FILE, DCP_PREV)})
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
    """The newest good checkpoint of a run folder, for sample/bench: {"model": full state
    dict, "step", ...}, from ckpt.pt or, if newer, ckpt.dcp/ (a sharded run's, its shards
    read into full tensors in this one process); CheckpointError if none."""
    run_dir = Path(run_dir)
    state, notes = load(run_dir / CKPT_FILE, device, weights_only=True, set_aside=False)
    name, trainer, more = choose_sharded(run_dir, set_aside=False, weights_only=True)
    notes += more
    if name is not None and (state is None or trainer["step"] > state["step"]):
        state = trainer | {"model": read_sharded_model(run_dir / name, device)}
    if state is None:
        raise CheckpointError("; ".join(notes) or f"no {CKPT_FILE} or {DCP_DIR}/")
    return state, notes


def has_checkpoint(run_dir: Path) -> bool:
    """True if the folder holds a checkpoint file or folder (verified only when loaded)."""
    run_dir = Path(run_dir)
    return any((run_dir / f).is_file() for f in (CKPT_FILE, PREV_FILE)) or \
        any((run_dir / d).is_dir() for d in (DCP_DIR, DCP_PREV))


def clean_stale_temp(run_dir: Path) -> list[str]:
    """Remove temp files and folders a killed writer left (call under the run's lock); their names."""
    gone = []
    for f in Path(run_dir).glob(".*.tmp"):
        _remove(f)
        gone.append(f.name)
    return gone


# ---------------------------------------------------------------- sharded checkpoints
class _HashingStream(_HashingFile):
    """A file torch.distributed.checkpoint writes to, hashing the bytes on their way."""

    def tell(self) -> int:
        return self.f.tell()

    def fileno(self) -> int:
        return self.f.fileno()

    def close(self) -> None:
        self.f.close()


def _hashing_writer(folder: Path):
    """dcp's FileSystemWriter whose streams hash what they write: `.fs.hashes`, {file name:
    sha256} of this rank's files (rank 0's .metadata by its final name)."""
    from torch.distributed.checkpoint import FileSystemWriter
    from torch.distributed.checkpoint.filesystem import FileSystem

    class HashingFileSystem(FileSystem):
        def __init__(self):
            self.hashes: dict[str, str] = {}

        @contextmanager
        def create_stream(self, path, mode):
            with super().create_stream(path, mode) as stream:
                if "w" not in mode:
                    yield stream
                    return
                out = _HashingStream(stream)
                yield out
            self.hashes[Path(path).name] = out.sha.hexdigest()

        def rename(self, path, new_path) -> None:
            super().rename(path, new_path)
            self.hashes[Path(new_path).name] = self.hashes.pop(Path(path).name)

    writer = FileSystemWriter(folder)
    writer.fs = HashingFileSystem()
    return writer


def _distributed():
    """torch.distributed when a process group is up (torchrun), else None (one process)."""
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def save_sharded(shards: dict, state: dict, run_dir: Path, keep_every: int | None = None) -> None:
    """Every rank: write its shards (a `parallel.sharded_state`) with torch.distributed.
    checkpoint into .ckpt.dcp.tmp/, rank 0 also `state` (trainer.pt: everything else), then
    rank 0 promotes the folder to ckpt.dcp/ and records every file's sha256 (module docstring).
    Collective: every rank calls it, and returns once the folder is in place."""
    import torch.distributed.checkpoint as dcp

    run_dir, dist = Path(run_dir), _distributed()
    main = dist is None or dist.get_rank() == 0
    tmp = run_dir / f".{DCP_DIR}.tmp"
    if main:  # a folder a killed save left: dcp would mix its files with the new ones
        _remove(tmp)
        tmp.mkdir()
    if dist is not None:
        dist.barrier()
    writer = _hashing_writer(tmp)
    dcp.save(shards, storage_writer=writer)
    hashes = writer.fs.hashes
    if main:
        hashes[TRAINER_FILE] = _write_file(tmp / TRAINER_FILE, state)
    parts = [hashes]
    if dist is not None:
        parts = [None] * dist.get_world_size()
        dist.all_gather_object(parts, hashes)
    if main:
        files = {k: v for part in parts for k, v in sorted(part.items())}
        step = state.get("step")
        _promote(tmp, run_dir / DCP_DIR, run_dir / DCP_PREV, {"files": files, "step": step},
                 step_file(step, sharded=True), keep_every)
    if dist is not None:
        dist.barrier()  # no rank saves again (or reads) before the folder is in place


def choose_sharded(run_dir: Path, set_aside: bool = True,
                   weights_only: bool = False) -> tuple[str | None, dict | None, list[str]]:
    """(name of the newest checkpoint folder whose files match the manifest, its trainer.pt
    state, notes on every folder passed over); with set_aside, rejected folders are renamed
    *.corrupt. One process decides (rank 0 under torchrun, which tells the others)."""
    import torch

    run_dir = Path(run_dir)
    manifest = _manifest(run_dir) or {}
    good = [e.get("files") for e in manifest.values() if isinstance(e, dict) and "files" in e]
    notes = []
    for name in (DCP_DIR, DCP_PREV):
        folder = run_dir / name
        if not folder.is_dir():
            continue
        files = {f.name: file_sha256(f) for f in sorted(folder.iterdir()) if f.is_file()}
        why = None
        if files not in good:
            why = "its files' sha256 do not match the recorded checksums (killed while saving, or corrupted)"
        else:
            try:
                state = torch.load(folder / TRAINER_FILE, map_location="cpu",
                                   weights_only=weights_only, mmap=True)
            except Exception as e:
                why = f"{TRAINER_FILE} unreadable ({type(e).__name__})"
        if why is None:
            return name, state, notes
        notes.append(f"{name}/: {why}" + (f"; kept as {name}.corrupt" if set_aside else ""))
        if set_aside:
            _remove(run_dir / f"{name}.corrupt")
            os.replace(folder, run_dir / f"{name}.corrupt")
    return None, None, notes


def load_sharded(shards: dict, folder: Path) -> None:
    """Fill `shards` (a `parallel.sharded_state` of the live model: each rank its own slices)
    in place from a checkpoint folder. Collective under torchrun."""
    import torch.distributed.checkpoint as dcp

    dcp.load(shards, checkpoint_id=Path(folder))


def read_sharded_model(folder: Path, device: str = "cpu") -> dict:
    """The model's full state dict from a checkpoint folder, read in this one process (no
    process group: each tensor assembled from every rank's shard file)."""
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict_from_keys

    with warnings.catch_warnings():  # one process is what is meant: torch warns it assumes so
        warnings.filterwarnings("ignore", message="torch.distributed is unavailable or uninitialized")
        model = _load_state_dict_from_keys({"model"}, checkpoint_id=Path(folder))["model"]
    return {k: v.to(device) for k, v in model.items()}
