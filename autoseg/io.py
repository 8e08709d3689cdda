"""The one place autoseg writes files that others read: atomic writes, JSON helpers and file locks.

Readers never see half a file (write to a temporary file in the same folder, then ``os.replace``),
and a file that concurrent runs read, change and write back (nnU-Net's plans file,
``autoseg_trainers.json``, ``splits_final.json``) is changed under a lock. The locks are
``filelock``'s: ``fcntl`` locks on POSIX, so a process killed with SIGKILL releases them.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

__all__ = ["atomic_write_text", "atomic_write_json", "read_json", "file_lock", "try_lock", "update_json", "Timeout"]


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; others' readers (a shared store) need the usual mode
        with os.fdopen(fd, "w", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())  # a machine that loses power keeps the old file or the new, never an empty one
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2, sort_keys: bool = False) -> None:
    """``obj`` as JSON, written atomically (non-JSON values such as paths become strings)."""
    atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=sort_keys, default=str) + "\n")


def read_json(path: str | os.PathLike, default: Any = None) -> Any:
    """The JSON in ``path``, or ``default`` when it does not exist or is not JSON."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return default


def _lock_path(path: Path) -> Path:
    # beside the file, hidden: the lock must live on the same file system as what it guards
    return path.with_name(f".{path.name}.lock")


@contextlib.contextmanager
def file_lock(path: str | os.PathLike, timeout: float = -1) -> Iterator[None]:
    """Hold the lock that guards ``path`` (``.<name>.lock`` beside it) for the duration of a block.

    ``timeout`` -1 waits for ever; otherwise :class:`filelock.Timeout` is raised after that many seconds.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(_lock_path(path)), timeout=timeout):
        yield


def try_lock(path: str | os.PathLike) -> FileLock | None:
    """The lock guarding ``path`` if it is free now (the caller releases it), else ``None``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(_lock_path(path)), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        return None
    return lock


def update_json(path: str | os.PathLike, change: Callable[[Any], Any], default: Any = None,
                indent: int | None = 2, sort_keys: bool = False) -> Any:
    """Read ``path`` (``default`` if absent), apply ``change`` and write the result back, all under the file's lock.

    ``change`` returns the new content, or ``None`` to leave the file as it is. Returns what the file
    holds afterwards. Two processes updating one file this way never lose each other's changes.
    """
    path = Path(path)
    with file_lock(path):
        current = read_json(path, None) if path.exists() else None
        if current is None:
            if path.exists() and path.stat().st_size:
                raise ValueError(f"{path} is not valid JSON; refusing to overwrite it")
            current = default
        new = change(current)
        if new is None:
            return current
        atomic_write_json(path, new, indent=indent, sort_keys=sort_keys)
        return new
