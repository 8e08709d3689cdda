"""Atomic writing of an nnU-Net raw dataset: a temporary folder renamed into place at the very end."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from autoseg.data.convert.validate import CaseSpec, ImageData, LabelSpec, ValidationReport, progress_interval

SPLITS_FILE = "autoseg_splits.json"
# nnU-Net's own defaults (nnunetv2.utilities.crossval_split via nnUNetTrainer.do_split); using
# them means the frozen folds equal the ones nnU-Net would have drawn for the same cases.
CV_FOLDS = 5
CV_SEED = 12345


class DatasetExistsError(FileExistsError):
    """The target dataset folder exists and ``force`` was not given."""


@dataclass
class DatasetPlan:
    """Everything a converter found out about a source, before anything is read in bulk."""

    name: str                         # "Synapse" -> DatasetXXX_Synapse
    default_id: int
    source: Path
    cases: list[CaseSpec]
    labels: LabelSpec
    class_names: dict[int, str]       # output value -> real class name (without the ignore label)
    channel_names: dict[str, str]
    file_ending: str
    natural_image: bool = False
    ignore_label: int | None = None
    expected_channels: int | None = None
    resize: tuple[int, int] | None = None  # (width, height), 2D only
    problems: list = field(default_factory=list)   # found while discovering (missing partners...)
    warnings: list[str] = field(default_factory=list)
    extra_folds: list[dict] = field(default_factory=list)  # appended after the 5 CV folds
    metadata: dict = field(default_factory=dict)           # description, reference, licence
    autoseg: dict = field(default_factory=dict)            # extra keys for the "autoseg" block
    on_validated: Callable[[DatasetPlan, ValidationReport], None] | None = None

    @property
    def train_cases(self) -> list[str]:
        return sorted(c.name for c in self.cases if c.split == "train")

    @property
    def test_cases(self) -> list[str]:
        return sorted(c.name for c in self.cases if c.split == "test")

    @property
    def evaluated_classes(self) -> list[int]:
        values = sorted(self.class_names)
        return values if self.natural_image else [v for v in values if v != 0]


def crossval_splits(train_cases: list[str], n_splits: int = CV_FOLDS, seed: int = CV_SEED) -> list[dict]:
    """The folds nnU-Net would draw (KFold, shuffled, seed 12345, over the sorted case names)."""
    from sklearn.model_selection import KFold

    names = sorted(train_cases)
    n = min(n_splits, len(names))
    if n < 2:
        return []
    folds = []
    for tr, va in KFold(n_splits=n, shuffle=True, random_state=seed).split(names):
        folds.append({"train": [names[i] for i in tr], "val": [names[i] for i in va]})
    return folds


def dataset_json_for(plan: DatasetPlan, full_name: str, splits: list[dict]) -> dict:
    values = sorted(plan.class_names)
    if values != list(range(len(values))):
        raise ValueError(f"labels of {plan.name} must be 0..{len(values) - 1}, got {values}")
    if plan.ignore_label is not None and plan.ignore_label != len(values):
        raise ValueError(f"the ignore label must be the highest value ({len(values)}), got {plan.ignore_label}")
    labels: dict[str, int] = {}
    for v in values:
        # nnU-Net's LabelManager insists on a key named "background" for 0, whatever class 0 is;
        # the real name of class 0 (road, sky) lives in autoseg.class_names.
        key = "background" if v == 0 else plan.class_names[v]
        while key in labels or key in ("background", "ignore") and v != 0:
            key = f"{key}_{v}"
        labels[key] = v
    if plan.ignore_label is not None:
        labels["ignore"] = plan.ignore_label
    dj = {
        "channel_names": plan.channel_names,
        "labels": labels,
        "numTraining": len(plan.train_cases),
        "file_ending": plan.file_ending,
        "name": full_name,
    }
    if plan.natural_image:
        dj["overwrite_image_reader_writer"] = "NaturalImage2DIO"
    dj.update(plan.metadata)
    dj["numTest"] = len(plan.test_cases)
    block = {
        "natural_image": plan.natural_image,
        "evaluated_classes": plan.evaluated_classes,
        "class_names": {str(v): plan.class_names[v] for v in values},
        "ignore_label": plan.ignore_label,
        # PROTOCOL.md: medical results are means over cases, natural-image results come from one
        # confusion matrix over the whole test set.
        "aggregation": "dataset_confusion_matrix" if plan.natural_image else "per_case",
        "train_split": plan.train_cases,
        "test_split": plan.test_cases,
        "test_has_labels": any(c.read_label is not None for c in plan.cases if c.split == "test"),
        "splits_file": SPLITS_FILE if splits else None,
        "n_cv_folds": len(splits) - len(plan.extra_folds) if splits else 0,
        "label_mapping": ({str(k): v for k, v in sorted(plan.labels.lut.items())}
                          if plan.labels.lut is not None else None),
        "resized_to": list(plan.resize) if plan.resize else None,
    }
    block.update(plan.autoseg)
    dj["autoseg"] = block
    return dj


def _label_dtype(max_value: int):
    return np.uint8 if max_value < 256 else np.uint16


def _resize(arr: np.ndarray, size: tuple[int, int], nearest: bool) -> np.ndarray:
    from PIL import Image

    if arr.shape[1::-1] == tuple(size):
        return arr
    resample = Image.NEAREST if nearest else Image.BILINEAR
    if arr.ndim == 3:  # RGB
        return np.asarray(Image.fromarray(arr).resize(size, resample))
    if nearest:
        # mode "I" keeps label values above 255 intact
        return np.asarray(Image.fromarray(arr.astype(np.int32)).resize(size, resample)).astype(arr.dtype)
    return np.asarray(Image.fromarray(arr.astype(np.float32), mode="F").resize(size, resample)).astype(arr.dtype)


def _save(arr: np.ndarray, ref: ImageData, path: Path, ending: str) -> None:
    if ending == ".png":
        from PIL import Image

        Image.fromarray(arr).save(path)
    elif ending == ".tif":
        import tifffile

        tifffile.imwrite(path, arr)
    else:
        import SimpleITK as sitk

        img = sitk.GetImageFromArray(arr)
        if ref.spacing is not None:
            img.SetSpacing(ref.spacing)
            img.SetOrigin(ref.origin)
            img.SetDirection(ref.direction)
        sitk.WriteImage(img, str(path), True)


def write_case(plan: DatasetPlan, case: CaseSpec, root: Path) -> None:
    images = case.read_images()
    suffix = "Tr" if case.split == "train" else "Ts"
    ending = plan.file_ending
    ref = images[0]
    for c, im in enumerate(images):
        arr = im.array
        if plan.resize:
            arr = _resize(arr, plan.resize, nearest=False)
        _save(arr, im, root / f"images{suffix}" / f"{case.name}_{c:04d}{ending}", ending)
    if case.read_label is None:
        return
    label = case.read_label()
    mapped = plan.labels.map(np.asarray(label.array).astype(np.int64))
    mapped = mapped.astype(_label_dtype(int(mapped.max()) if mapped.size else 0))
    if plan.resize:
        mapped = _resize(mapped, plan.resize, nearest=True)
    # labels take the image's geometry: validation proved they agree within tolerance, and an
    # exact match spares nnU-Net's integrity check its origin/direction warnings
    _save(mapped, ref, root / f"labels{suffix}" / f"{case.name}{ending}", ending)


def write_dataset(plan: DatasetPlan, target: Path, *, force: bool = False,
                  progress: Callable[[str], None] | None = None) -> dict:
    """Write ``plan`` to ``target`` via a temporary sibling folder; returns the dataset.json written."""
    target = Path(target)
    if target.exists() and not force:
        raise DatasetExistsError(f"{target} exists; pass force=True (--force) to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    splits = crossval_splits(plan.train_cases)
    if splits:
        splits = splits + plan.extra_folds
    dj = dataset_json_for(plan, target.name, splits)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        for sub in ("imagesTr", "labelsTr"):
            (tmp / sub).mkdir()
        if plan.test_cases:
            (tmp / "imagesTs").mkdir()
            if dj["autoseg"]["test_has_labels"]:
                (tmp / "labelsTs").mkdir()
        every = progress_interval(len(plan.cases))
        for i, case in enumerate(plan.cases):
            write_case(plan, case, tmp)
            if progress and ((i + 1) % every == 0 or i + 1 == len(plan.cases)):
                progress(f"wrote {i + 1}/{len(plan.cases)} cases")
        (tmp / "dataset.json").write_text(json.dumps(dj, indent=2) + "\n")
        if splits:
            (tmp / SPLITS_FILE).write_text(json.dumps(splits, indent=2) + "\n")
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.replaced-", dir=target.parent))
            os.replace(target, old / target.name)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dj


def install_splits(raw_dataset_dir: str | Path, preprocessed_dataset_dir: str | Path, *, force: bool = False) -> Path:
    """Copy the frozen folds (``autoseg_splits.json``) to ``splits_final.json`` where nnU-Net reads them.

    nnU-Net looks for ``splits_final.json`` in the *preprocessed* dataset folder and, if absent,
    draws folds itself. Installing the frozen file before training makes every loss of a
    comparison use the same folds (PROTOCOL.md). An existing, different ``splits_final.json`` is
    never replaced silently: that would change the folds under already trained models.
    """
    src = Path(raw_dataset_dir) / SPLITS_FILE
    if not src.is_file():
        raise FileNotFoundError(f"{src} not found; datasets written by `autoseg convert` carry it")
    splits = json.loads(src.read_text())
    dst_dir = Path(preprocessed_dataset_dir)
    dst_dir.mkdir(parents=True, exist_ok=True)
    dst = dst_dir / "splits_final.json"
    if dst.is_file() and not force:
        if json.loads(dst.read_text()) == splits:
            return dst
        raise FileExistsError(f"{dst} exists with other folds; models trained on it would no longer match. "
                              "Pass force=True only if nothing was trained with it")
    from autoseg.io import atomic_write_text

    atomic_write_text(dst, json.dumps(splits, indent=2) + "\n")  # nnU-Net and concurrent runs read it
    return dst
