"""Where autoseg keeps nnU-Net's raw, preprocessed and results folders, and how nnU-Net is told."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

NNUNET_VARS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")


@dataclass(frozen=True)
class WorkDirs:
    raw: Path
    preprocessed: Path
    results: Path

    def as_env(self) -> dict[str, str]:
        return {"nnUNet_raw": str(self.raw), "nnUNet_preprocessed": str(self.preprocessed),
                "nnUNet_results": str(self.results)}


def default_work_dir() -> Path:
    return Path(os.environ.get("AUTOSEG_HOME", Path.home() / "autoseg_work")).expanduser()


def resolve_work_dirs(work_dir: str | os.PathLike | None = None) -> WorkDirs:
    """The three nnU-Net folders: each ``nnUNet_*`` variable wins when set, else ``work_dir``/<name>."""
    base = Path(work_dir).expanduser() if work_dir is not None else default_work_dir()
    found = {}
    for var, sub in zip(NNUNET_VARS, ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")):
        value = os.environ.get(var)
        found[var] = Path(value).expanduser() if value else base / sub
    return WorkDirs(found["nnUNet_raw"], found["nnUNet_preprocessed"], found["nnUNet_results"])


def extension_trainer_dir() -> Path:
    """The tiny folder that ``nnUNet_extTrainer`` points at (holds generated trainer classes)."""
    return Path(__file__).resolve().parent / "trainers" / "nnunet_ext"


def configure_nnunet(dirs: WorkDirs) -> None:
    """Create the folders and export them (and the trainer extension path) for nnU-Net.

    nnU-Net 2.8 reads the variables each time it needs a folder, so this may run after
    ``nnunetv2`` was imported.
    """
    for p in (dirs.raw, dirs.preprocessed, dirs.results):
        p.mkdir(parents=True, exist_ok=True)
    os.environ.update(dirs.as_env())
    ext = str(extension_trainer_dir())
    current = [p for p in os.environ.get("nnUNet_extTrainer", "").split(os.pathsep) if p]
    if ext not in current:
        os.environ["nnUNet_extTrainer"] = os.pathsep.join([ext, *current])
