"""A quiet console: nnU-Net's own output goes to a log file, autoseg's concise lines to the terminal.

nnU-Net prints plans dictionaries, progress bars and per-epoch blocks from the main process and
from its worker processes (preprocessing, augmentation, validation). Python-level redirection
(``contextlib.redirect_stdout``) misses the workers and C-level writes, so :func:`capture` swaps
the file descriptors 1 and 2 themselves for the log file; child processes inherit that. autoseg's
own lines go through :func:`say`, which writes to a duplicate of the terminal taken before the swap.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

_lock = threading.Lock()
_state: dict = {"depth": 0, "saved": None, "stream": None, "log": None}


def say(text: str, *, err: bool = False) -> None:
    """Print one of autoseg's own lines on the terminal, also while nnU-Net's output is captured.

    ``err`` chooses standard error (``--json`` keeps standard output for the JSON result).
    """
    saved = _state["saved"]
    if saved is None:
        stream = sys.stderr if err else sys.stdout
        print(text, file=stream, flush=True)
        return
    fd = saved[1] if err else saved[0]
    os.write(fd, (text + "\n").encode("utf-8", "replace"))


def log_path() -> Path | None:
    """The file nnU-Net's output goes to while :func:`capture` is active, else ``None``."""
    return _state["log"]


@contextlib.contextmanager
def capture(log_file: str | os.PathLike | None, enabled: bool = True) -> Iterator[Path | None]:
    """Send everything written to file descriptors 1 and 2 (this process and its children) to ``log_file``.

    Nested use keeps the outer log file. With ``enabled=False`` (``--verbose``) or ``log_file=None``
    nothing is redirected. The descriptors are restored however the block ends, so an error's
    traceback reaches the terminal.
    """
    if not enabled or log_file is None:
        yield None
        return
    with _lock:
        _state["depth"] += 1
        outer = _state["depth"] > 1
        if not outer:
            path = Path(log_file)
            path.parent.mkdir(parents=True, exist_ok=True)
            sys.stdout.flush()
            sys.stderr.flush()
            saved = (os.dup(1), os.dup(2))
            target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.dup2(target, 1)
            os.dup2(target, 2)
            os.close(target)
            _state.update(saved=saved, log=path)
    try:
        yield _state["log"]
    finally:
        with _lock:
            _state["depth"] -= 1
            if _state["depth"] == 0 and _state["saved"] is not None:
                with contextlib.suppress(Exception):
                    sys.stdout.flush()
                    sys.stderr.flush()
                out_fd, err_fd = _state["saved"]
                os.dup2(out_fd, 1)
                os.dup2(err_fd, 2)
                os.close(out_fd)
                os.close(err_fd)
                _state.update(saved=None, log=None)


@contextlib.contextmanager
def quiet(work_dir: str | os.PathLike | None, command: str, verbose: bool = False,
          err: bool = False) -> Iterator[Path | None]:
    """One command's nnU-Net output into ``<work>/logs/<command>-<time>-<pid>.log``, its path said first.

    ``verbose`` (the commands' ``--verbose``) leaves everything on the terminal. If the block fails,
    the path is said again, since the error's context is in the log.
    """
    if verbose:
        yield None
        return
    from autoseg.paths import default_work_dir

    base = Path(work_dir).expanduser() if work_dir is not None else default_work_dir()
    path = base / "logs" / f"{command}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    say(f"nnU-Net's own output goes to {path} (--verbose shows it here)", err=err)
    try:
        with capture(path) as p:
            yield p
    except BaseException:
        say(f"nnU-Net's output up to the error is in {path}", err=True)
        raise
