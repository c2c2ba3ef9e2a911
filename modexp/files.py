"""Files written atomically: JSON via a temp file, fsync and rename, so a reader never sees
half a file, and strict JSON (NaN and inf written as null). At the bottom of the package:
run files (runs/metrics.py) and checkpoints' manifests (training/checkpoint.py) use it.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path


def _umask_mode() -> int:
    """0666 less the process umask (read by setting it and putting it back)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


_FILE_MODE = _umask_mode()


def write_json_atomic(path: str | Path, obj: object) -> None:
    """Write JSON via a temp file + fsync + rename, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(strict_json(obj), indent=2, allow_nan=False))


def read_json(path: str | Path) -> dict:
    """Read a JSON file written by write_json_atomic; a garbled one raises JSONDecodeError
    naming the file (the CLI's one-line error)."""
    try:
        return json.loads(Path(path).read_text())
    except UnicodeDecodeError:
        raise json.JSONDecodeError(f"{path}: not text", "", 0) from None
    except json.JSONDecodeError as e:
        raise json.JSONDecodeError(f"{path}: not valid JSON ({e.msg})", e.doc, e.pos) from None


def strict_json(obj):
    """NaN/inf -> None so every file is strict JSON (a diverged loss is recorded as null)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    return obj


def write_text_atomic(path: Path, text: str) -> None:
    """Replace path's content with text atomically (temp file in its folder, fsync, rename)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, _FILE_MODE)  # mkstemp makes 0600; results follow the umask like any file
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
