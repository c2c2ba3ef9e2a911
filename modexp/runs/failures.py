"""Honest failure states: the run's own fault is recorded as failed, the environment's is not.

A run that diverges or raises from its own code is `failed` (summary.json + error.log) and
stays failed until `--retry-failed`. A run stopped by its environment (device missing or lost,
out of memory, disk full or read-only, killed) is left `interrupted`: nothing about the run is
wrong, so the next `modexp run` continues it from its checkpoint. The cause is kept in
interrupted.json (shown by `modexp status`) until the run finishes.
"""

from __future__ import annotations

import errno
import time
import traceback
from pathlib import Path

from modexp.records import Summary
from modexp.runs.metrics import SUMMARY_FILE, write_json_atomic

ERROR_LOG, INTERRUPTED_FILE = "error.log", "interrupted.json"
_ENV_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.ENOMEM, errno.EACCES,
               errno.EPERM, errno.ENOENT, errno.ESTALE}
# Messages of RuntimeErrors raised by the device or its collectives, not by the run's code.
_ENV_MESSAGES = ("CUDA error", "CUDA out of memory", "out of memory", "can't allocate memory",
                 "NCCL", "CUDA driver", "no CUDA GPUs", "device-side assert")


def is_environment_error(exc: BaseException) -> bool:
    """True if the machine, not the run, failed: resumable rather than failed."""
    if isinstance(exc, MemoryError):
        return True
    if isinstance(exc, OSError):
        return exc.errno in _ENV_ERRNOS or exc.errno is None
    if isinstance(exc, RuntimeError):  # torch.cuda.OutOfMemoryError is a RuntimeError too
        text = str(exc)
        return type(exc).__name__ in ("OutOfMemoryError", "DistBackendError") or any(
            m in text for m in _ENV_MESSAGES)
    return False


def describe(exc: BaseException) -> str:
    """One line: exception type and message (first line)."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def record_failure(run_dir: Path, run_id: str, exc: BaseException) -> None:
    """summary.json with state failed and the error; the traceback in error.log."""
    (run_dir / ERROR_LOG).write_text("".join(traceback.format_exception(exc)))
    write_json_atomic(run_dir / SUMMARY_FILE, Summary.failed(run_id, describe(exc)).to_dict())


def record_interruption(run_dir: Path, exc: BaseException) -> bool:
    """Best effort (the disk may be full): interrupted.json with the cause; True if written."""
    try:
        write_json_atomic(run_dir / INTERRUPTED_FILE, {
            "error": describe(exc), "environment": True,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        return True
    except OSError:
        return False


def clear_records(run_dir: Path) -> None:
    """After a success: no stale error.log or interruption note stays beside the summary."""
    for name in (ERROR_LOG, INTERRUPTED_FILE):
        (run_dir / name).unlink(missing_ok=True)
