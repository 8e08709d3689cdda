"""The record of one run (one fold of one loss, configuration and seed): its type, reader and writer.

One JSON file, ``autoseg.json``, a few KB. It sits in nnU-Net's fold folder and, for grids, in the
result store (same relative path), and it is rewritten atomically at each change of state:
``pending`` -> ``running`` -> ``done`` or ``failed`` (with the error). A run whose record says
``done`` is finished, whether or not this machine holds its checkpoint: the record carries what
the report needs (per-case metrics of the validation cases, test-set scores where there are any).

Older ``autoseg.json`` files (written before records had a version) are read as well.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from autoseg.io import atomic_write_json, read_json

RECORD_NAME = "autoseg.json"
RECORD_VERSION = 2
#: how a record writes its times (``started``, ``finished``): local time, whole seconds
STAMP_FORMAT = "%Y-%m-%dT%H:%M:%S"
STATES = ("pending", "running", "done", "failed")


@dataclass
class FoldRecord:
    """Everything known about one run: identity, settings, where and how long it ran, and its results."""

    # identity: together these determine the result (the run's folder is named by them)
    dataset: str
    configuration: str  # the trained configuration in the plans file, e.g. 3d_fullres_smoke
    trainer: str  # nnUNetTrainer_autoseg_<loss>[_<hash>][_seed<N>]
    fold: int | str
    loss: str
    loss_args: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    plans: str = "nnUNetPlans"
    architecture: str = "cnn"
    base_configuration: str = ""  # nnU-Net's configuration it inherits (its preprocessed data)
    budget: dict[str, Any] = field(default_factory=dict)  # {"name": ..., "epochs": ..., ...}
    plan: dict[str, Any] | None = None  # the planner's choice, estimate and overrides (planned runs)
    natural_image: bool = False
    # state
    status: str = "pending"
    error: str | None = None
    attempts: int = 0  # times a worker started it (a resumed run counts again)
    device: str = ""
    precision: str = ""  # of the training step: fp16-amp (CUDA), bf16 or fp32 (CPU); see autoseg/precision.py
    host: str = ""
    executor: str = ""
    job_id: str | None = None  # the executor's id of the job running it (a Slurm job), where it has one
    started: str | None = None
    finished: str | None = None
    # of the run: the finishing attempt's time plus, where it resumed from a checkpoint, the earlier attempts'
    # time up to that checkpoint (resumed_seconds; autoseg.grid.worker.carried_seconds)
    wall_seconds: float | None = None
    resumed_seconds: float | None = None
    epochs_completed: int | None = None
    seconds_per_epoch: float | None = None  # mean of nnU-Net's "Epoch time" lines (its training log stays behind)
    checkpoint: str | None = None  # which checkpoint was scored: "final"
    # per epoch, from nnU-Net's training log: epoch, train_loss, val_loss, pseudo_dice, epoch_time (None where
    # the log has no value), so that a report from the store alone still draws the training curves
    curves: dict[str, list[float | None]] | None = None
    # results
    per_case: list[dict[str, Any]] = field(default_factory=list)  # nnU-Net's: {"case": ..., "dice": {label: v}}
    evaluation: dict[str, Any] | None = None  # autoseg's metric rows: {"metrics_version", "tolerance_mm", "rows"}
    test: dict[str, Any] | None = None  # held-out test-set scores, where the dataset has a test set
    version: int = RECORD_VERSION

    @property
    def run_dir_name(self) -> str:
        """nnU-Net's name of the training output folder: ``<trainer>__<plans>__<configuration>``."""
        return f"{self.trainer}__{self.plans}__{self.configuration}"

    @property
    def run_id(self) -> str:
        """``<dataset>/<trainer>__<plans>__<configuration>/fold_<fold>``: the run's path in nnU-Net's
        results folder and in the result store."""
        return f"{self.dataset}/{self.run_dir_name}/fold_{self.fold}"

    @property
    def done(self) -> bool:
        return self.status == "done"

    def identity(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "configuration": self.configuration, "architecture": self.architecture,
                "plans": self.plans, "loss": self.loss, "loss_args": self.loss_args, "fold": self.fold,
                "seed": self.seed, "trainer": self.trainer}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FoldRecord:
        """A record from its JSON form; a file without ``version`` is an older ``autoseg.json``."""
        data = dict(data)
        if "version" not in data:
            data = _from_v1(data)
        missing = [k for k in ("dataset", "configuration", "trainer", "fold", "loss") if k not in data]
        if missing:
            raise ValueError(f"a run record needs {', '.join(missing)}")
        known = {f.name for f in fields(cls)}
        rec = cls(**{k: v for k, v in data.items() if k in known})
        if rec.status not in STATES:
            raise ValueError(f"unknown run status {rec.status!r}; one of {', '.join(STATES)}")
        return rec


def _from_v1(data: dict[str, Any]) -> dict[str, Any]:
    """Map the first ``autoseg.json`` (written by plan_and_train before records existed) to a record."""
    out = dict(data)
    if not isinstance(out.get("budget"), dict):
        out["budget"] = {"name": str(out.get("budget", "unknown"))}
    if "seconds" in out:
        out["wall_seconds"] = out.pop("seconds")
    out.setdefault("architecture", "cnn")
    out.setdefault("seed", 0)
    if out.get("status") not in STATES:
        out["status"] = "failed" if out.get("error") else "running"
    if out["status"] == "done":
        out.setdefault("checkpoint", "final")
    out["version"] = 1
    return out


def read_record(path: str | os.PathLike) -> FoldRecord | None:
    """The record in ``path`` (a file, or a fold folder holding ``autoseg.json``); ``None`` if there is none.

    A file that exists but is not a record raises ``ValueError`` naming it.
    """
    path = Path(path)
    if path.is_dir():
        path = path / RECORD_NAME
    data = read_json(path)
    if data is None:
        if path.is_file() and path.stat().st_size:
            raise ValueError(f"{path} is not valid JSON")
        return None
    if not isinstance(data, dict):
        raise ValueError(f"{path} does not hold a run record (a JSON object)")
    try:
        return FoldRecord.from_dict(data)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: {e}") from None


def write_record(path: str | os.PathLike, record: FoldRecord) -> Path:
    """Write ``record`` atomically to ``path`` (a file, or a folder that gets ``autoseg.json``)."""
    path = Path(path)
    if path.suffix != ".json":
        path = path / RECORD_NAME
    atomic_write_json(path, record.to_dict())
    return path


def now_stamp() -> str:
    """The current time as a record writes it."""
    return time.strftime(STAMP_FORMAT)


def stamp_seconds(stamp: str | None) -> float | None:
    """Seconds since the epoch of a record's time ``stamp`` (None if it is absent or malformed)."""
    try:
        return time.mktime(time.strptime(stamp or "", STAMP_FORMAT))
    except ValueError:
        return None


__all__ = ["FoldRecord", "RECORD_NAME", "RECORD_VERSION", "STAMP_FORMAT", "STATES", "now_stamp", "read_record",
           "stamp_seconds", "write_record"]
