"""Where a grid stands: states of its runs, a progress bar, time spent and left, and what failed and why."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

from autoseg.grid.store import Store
from autoseg.records import FoldRecord, stamp_seconds
from autoseg.trainers.names import parse_trainer_name


def _elapsed(record: FoldRecord) -> float:
    started = stamp_seconds(record.started)
    return 0.0 if started is None else max(0.0, time.time() - started)


def run_row(record: FoldRecord, state: str, results: str | None = None) -> dict[str, Any]:
    """One run as ``--json`` lists it."""
    return {"run_id": record.run_id, "dataset": record.dataset, "configuration": record.configuration,
            "architecture": record.architecture, "loss": record.loss, "hyper_parameters": record.loss_args,
            "fold": record.fold, "seed": record.seed, "trainer": record.trainer,
            "directory": f"{results}/{record.run_id}" if results else record.run_id, "state": state,
            "error": record.error, "wall_seconds": record.wall_seconds, "attempts": record.attempts}


def summarize(records: Sequence[FoldRecord], states: Sequence[str], jobs: int = 1) -> dict[str, Any]:
    """Counts per state, seconds spent (finished attempts plus the running ones so far) and an estimate of
    the seconds left (mean of the finished runs x runs left / ``jobs``)."""
    counts = Counter(states)
    done_s = [r.wall_seconds for r, s in zip(records, states) if s == "done" and r.wall_seconds]
    spent = sum(r.wall_seconds or 0.0 for r, s in zip(records, states) if s in ("done", "failed"))
    spent += sum(_elapsed(r) for r, s in zip(records, states) if s == "running")
    left_runs = sum(counts[s] for s in ("missing", "pending", "running", "interrupted"))
    mean = sum(done_s) / len(done_s) if done_s else None
    left = mean * left_runs / max(1, jobs) if mean is not None else None
    failed = [{"run_id": r.run_id, "error": r.error} for r, s in zip(records, states) if s == "failed"]
    return {"total": len(records), "counts": dict(counts), "seconds_spent": round(spent, 1),
            "seconds_left": None if left is None else round(left, 1), "failed": failed}


def progress_bar(done: int, total: int, width: int = 30) -> str:
    filled = int(round(width * done / total)) if total else width
    return "[" + "#" * filled + "." * (width - filled) + f"] {done}/{total}"


def _fmt_s(s: float | None) -> str:
    if s is None:
        return "unknown (no run finished yet)"
    s = int(round(s))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def format_status(records: Sequence[FoldRecord], states: Sequence[str], jobs: int = 1) -> str:
    """The grid as text: one line per (dataset, configuration, method, seed) with a letter per fold, then totals."""
    summary = summarize(records, states, jobs)
    letters = {"done": "D", "running": "R", "pending": ".", "missing": ".", "interrupted": "I", "failed": "F"}
    groups: dict[tuple, list[tuple[str, str]]] = {}
    for r, s in zip(records, states):
        parsed = parse_trainer_name(r.trainer)
        method = r.loss + (f"[{','.join(f'{k}={v}' for k, v in sorted(r.loss_args.items()))}]" if r.loss_args else "")
        key = (r.dataset, r.configuration, method, r.seed if parsed else 0)
        groups.setdefault(key, []).append((str(r.fold), letters.get(s, "?")))
    lines = []
    for (dataset, config, method, seed), folds in sorted(groups.items(), key=lambda kv: tuple(map(str, kv[0]))):
        marks = " ".join(f"{f}:{m}" for f, m in sorted(folds, key=lambda x: (len(x[0]), x[0])))
        lines.append(f"  {dataset} {config} {method} seed {seed}: {marks}")
    c = summary["counts"]
    lines.append("")
    lines.append(f"{progress_bar(c.get('done', 0), summary['total'])} done; running {c.get('running', 0)}, "
                 f"pending {c.get('pending', 0) + c.get('missing', 0)}, interrupted {c.get('interrupted', 0)}, "
                 f"failed {c.get('failed', 0)}")
    lines.append(f"time spent {_fmt_s(summary['seconds_spent'])}; left about {_fmt_s(summary['seconds_left'])}"
                 + (f" at {jobs} run(s) at once" if jobs > 1 else " one run at a time"))
    for f in summary["failed"]:
        lines.append(f"failed: {f['run_id']}: {f['error']}")
    lines.append("D done, R running, . pending, I interrupted (resumes on rerun), F failed (rerun with --retry-failed)")
    return "\n".join(lines)


def store_status(store: Store) -> tuple[list[FoldRecord], list[str]]:
    """Every record of ``store`` with its state as seen now: the executor's view where it has one (a run queued
    or running on Slurm, whose record the worker has not touched yet), else the store's."""
    from autoseg.grid.executors import EXECUTORS, list_executors

    list_executors()  # fills the table with the executors defined in their own modules
    records, states = [], []
    for _, record in store.records():
        state = store.view(record.run_id, record)
        engine = EXECUTORS.get(record.executor)
        if engine is not None and state in ("pending", "running", "interrupted"):
            state = engine.record_status(record) or state
        records.append(record)
        states.append(state)
    return records, states


__all__ = ["format_status", "progress_bar", "run_row", "store_status", "summarize"]
