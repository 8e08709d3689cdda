"""The result store: one record per run at ``<store>/<dataset>/<trainer>__<plans>__<configuration>/fold_<N>/autoseg.json``.

The store holds records only (a few KB each), so it can be committed to git or copied off a
cluster; checkpoints and predictions stay in nnU-Net's results folder. A run whose record says
``done`` is finished wherever the store is read. Each record is rewritten atomically, and the
worker running a run holds its record's lock for as long as it runs (an ``fcntl`` lock, freed
when the process dies), which is how two copies of a command never run one run twice and how a
record left ``running`` by a killed process is told apart from a run still going.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock

from autoseg.io import try_lock
from autoseg.records import RECORD_NAME, FoldRecord, read_record, write_record

#: states a run can be seen in: the record's status, plus ``interrupted`` (left ``running`` by a
#: process that is gone) and ``missing`` (no record yet)
VIEW_STATES = ("missing", "pending", "running", "interrupted", "failed", "done")


class Store:
    """A result store rooted at ``root``."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser()

    def path(self, run_id: str) -> Path:
        return self.root / run_id / RECORD_NAME

    def read(self, run_id: str) -> FoldRecord | None:
        return read_record(self.path(run_id))

    def write(self, record: FoldRecord) -> Path:
        return write_record(self.path(record.run_id), record)

    def try_claim(self, run_id: str) -> FileLock | None:
        """The run's lock if no other process holds it (the caller releases it when the run ends)."""
        return try_lock(self.path(run_id))

    def is_held(self, run_id: str) -> bool:
        """Whether some process is running ``run_id`` now (holds its lock)."""
        lock = self.try_claim(run_id)
        if lock is None:
            return True
        lock.release()
        return False

    def view(self, run_id: str, record: FoldRecord | None = None) -> str:
        """The run's state as seen now (one of :data:`VIEW_STATES`)."""
        record = record if record is not None else self.read(run_id)
        if record is None:
            return "missing"
        if record.status == "running" and not self.is_held(run_id):
            return "interrupted"
        return record.status

    def records(self) -> Iterator[tuple[Path, FoldRecord]]:
        """Every record in the store, in path order (unreadable files are skipped)."""
        if not self.root.is_dir():
            return
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames.sort()
            if RECORD_NAME in filenames:
                path = Path(dirpath) / RECORD_NAME
                try:
                    record = read_record(path)
                except ValueError:
                    continue
                if record is not None:
                    yield path, record


__all__ = ["Store", "VIEW_STATES"]
