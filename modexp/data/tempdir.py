"""A folder written in full or not at all: `modexp prepare` writes into DIR.tmp-XXXX beside DIR
and renames it to DIR at the end, so a DIR that exists is complete.

The writer holds an exclusive flock on its temp folder for as long as it writes (the lock is on
the folder itself, so nothing extra lands inside it). A prepare killed mid-way (kill -9, a
power cut) leaves its DIR.tmp-* behind with no lock held; the next prepare to the same DIR
removes such folders, and only those: a folder whose lock some live process holds is another
prepare at work and is left alone, as is one younger than STALE_AFTER seconds (its writer may
not have taken the lock yet). On failure or Ctrl-C the temp folder is removed, and so are the
parent folders of DIR this prepare created.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
import time
from pathlib import Path

STALE_AFTER = 10.0  # seconds: an unlocked temp folder at least this old belongs to a dead writer


def temp_prefix(out: Path) -> str:
    """The name prefix of out's temp folders."""
    return f"{out.name}.tmp-"


def _try_lock(path: Path) -> int | None:
    """An fd holding an exclusive flock on a folder, or None if another process holds it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def remove_stale(out: Path) -> list[str]:
    """Remove the temp folders of out left by killed writers; one note per folder removed."""
    notes, parent = [], out.parent
    try:
        names = sorted(n for n in os.listdir(parent) if n.startswith(temp_prefix(out)))
    except OSError:
        return notes
    for name in names:
        path = parent / name
        try:
            age = time.time() - path.lstat().st_mtime
        except OSError:
            continue
        if not path.is_dir() or path.is_symlink() or age < STALE_AFTER:
            continue
        fd = _try_lock(path)
        if fd is None:
            continue  # a live prepare is writing it
        try:
            shutil.rmtree(path)
            notes.append(f"removed {path}, left by a prepare that was killed")
        except OSError as e:
            notes.append(f"could not remove {path}, left by a prepare that was killed ({e.strerror})")
        finally:
            os.close(fd)
    return notes


class TempFolder:
    """`with TempFolder(out) as tmp:` write into tmp.path, then tmp.commit() renames it to out.
    Leaving the block without commit (an error, Ctrl-C) removes the folder and the parents of
    out it created."""

    def __init__(self, out: Path):
        self.out = out
        self.created: list[Path] = []  # parents of out this prepare made, outermost first
        self.notes: list[str] = []
        self.path: Path | None = None
        self.fd: int | None = None
        self.committed = False

    def __enter__(self) -> "TempFolder":
        missing = [p for p in (self.out.parent, *self.out.parent.parents) if not p.exists()]
        self.created = missing[::-1]
        try:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            self.notes += remove_stale(self.out)
            self.path = Path(tempfile.mkdtemp(dir=self.out.parent, prefix=temp_prefix(self.out)))
            self.fd = _try_lock(self.path)
        except BaseException:
            self._clean()
            raise
        return self

    def commit(self) -> None:
        """Make the folder's mode the user's default (mkdtemp makes it private; the folder is data
        to share) and rename it to out."""
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(self.path, 0o777 & ~mask)
        os.rename(self.path, self.out)
        self.committed = True

    def __exit__(self, *exc) -> None:
        if not self.committed:
            self._clean()
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def _clean(self) -> None:
        if self.path is not None:
            shutil.rmtree(self.path, ignore_errors=True)
        for p in reversed(self.created):  # innermost first; only if still empty
            try:
                p.rmdir()
            except OSError:
                break
