"""What a run's files say about its training: nnU-Net's per-epoch log lines and the cost of the run."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from autoseg.evaluation.runs import Run, read_json

_LOG_LINE = re.compile(r"^(?P<stamp>\S+ \S+): (?P<msg>.*?)\s*$")
_NP_SCALAR = re.compile(r"np\.(?:float|int)\d*\(([^)]*)\)")
NNUNET_DEFAULT_EPOCHS = 1000  # nnU-Net's own schedule; a budget with fewer epochs is a short-training comparison


def parse_training_log(paths: Sequence[Path]) -> dict[str, list[float]]:
    """Per-epoch ``epoch``, ``train_loss``, ``val_loss``, ``pseudo_dice`` (mean over classes) and ``epoch_time``
    (seconds, nnU-Net's "Epoch time" line) from nnU-Net's ``training_log_*.txt`` files, oldest first; an epoch
    logged again (a resumed run) keeps its last values. ``start`` and ``end`` hold the first and last time stamps
    (seconds since the epoch) when the log has any."""
    epochs: dict[int, dict[str, float]] = {}
    current = None
    stamps: list[float] = []
    for path in sorted(paths):
        try:
            lines = Path(path).read_text(errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            m = _LOG_LINE.match(line)
            if m is None:
                continue
            stamp = _timestamp(m["stamp"])
            if stamp is not None:
                stamps.append(stamp)
            msg = m["msg"]
            if msg.startswith("Epoch ") and msg[6:].strip().isdigit():
                current = int(msg[6:])
                epochs[current] = {}
            elif current is None:
                continue
            elif msg.startswith("train_loss "):
                epochs[current]["train_loss"] = _to_float(msg.split(None, 1)[1])
            elif msg.startswith("val_loss "):
                epochs[current]["val_loss"] = _to_float(msg.split(None, 1)[1])
            elif msg.startswith("Epoch time: "):
                epochs[current]["epoch_time"] = _to_float(msg[len("Epoch time: "):].removesuffix("s"))
            elif msg.startswith("Pseudo dice "):
                numbers = _NP_SCALAR.sub(r"\1", msg[len("Pseudo dice "):]).strip("[] ").split(",")
                values = [_to_float(v) for v in numbers if v.strip()]
                if values:
                    epochs[current]["pseudo_dice"] = float(np.nanmean(values))
    out: dict[str, list[float]] = {"epoch": [], "train_loss": [], "val_loss": [], "pseudo_dice": [],
                                   "epoch_time": []}
    for e in sorted(epochs):
        if not epochs[e]:
            continue
        out["epoch"].append(float(e))
        for k in ("train_loss", "val_loss", "pseudo_dice", "epoch_time"):
            out[k].append(epochs[e].get(k, float("nan")))
    out["start"], out["end"] = ([min(stamps)], [max(stamps)]) if stamps else ([], [])
    return out


def _timestamp(text: str) -> float | None:
    try:
        return datetime.strptime(text, "%Y-%m-%d %H:%M:%S.%f").timestamp()
    except ValueError:
        return None


def _to_float(text: str) -> float:
    try:
        return float(text.strip())
    except ValueError:
        return float("nan")


@dataclass
class RunCost:
    """What one run cost, each field None when nothing on disk says it; ``source`` names where each came from."""

    wall_seconds: float | None
    epochs_completed: int | None
    epochs_planned: int | None
    device: str | None
    seconds_per_epoch: float | None
    source: str

    @property
    def budget_limited(self) -> bool:
        """Trained for fewer epochs than nnU-Net's default schedule (or planned so)."""
        n = self.epochs_planned if self.epochs_planned is not None else self.epochs_completed
        return n is not None and n < NNUNET_DEFAULT_EPOCHS


def run_cost(run: Run) -> RunCost:
    """Cost of a run from its record (``autoseg.json``: ``wall_seconds`` or the older ``seconds``, ``device``,
    ``epochs_completed``, ``budget.epochs``) and nnU-Net's training log (epochs logged, "Epoch time" lines, first and
    last time stamps). The record wins where both say something."""
    meta = run.meta or read_json(run.path / "autoseg.json") or {}
    log = parse_training_log(list(run.path.glob("training_log_*.txt")))
    sources = []
    wall = meta.get("wall_seconds", meta.get("seconds"))
    if isinstance(wall, (int, float)) and not isinstance(wall, bool):
        sources.append("autoseg.json")
    else:
        wall = None
        if log["start"]:
            wall = log["end"][0] - log["start"][0]
            sources.append("training log")
    completed = meta.get("epochs_completed")
    if isinstance(completed, int) and not isinstance(completed, bool):
        if "autoseg.json" not in sources:
            sources.append("autoseg.json")
    else:
        completed = sum(1 for t in log["train_loss"] if not np.isnan(t)) if log["epoch"] else None
        if completed is not None and "training log" not in sources:
            sources.append("training log")
    budget = run.budget_detail or (meta.get("budget") if isinstance(meta.get("budget"), dict) else {}) or {}
    planned = budget.get("epochs")
    planned = int(planned) if isinstance(planned, (int, float)) else None
    times = [t for t in log["epoch_time"] if not np.isnan(t)]
    if times and "training log" not in sources:
        sources.append("training log")
    per_epoch = float(np.mean(times)) if times else (wall / completed if wall and completed else None)
    device = meta.get("device")
    return RunCost(float(wall) if wall is not None else None, completed, planned,
                   str(device) if device else None, per_epoch, " + ".join(sources) or "nothing found")
