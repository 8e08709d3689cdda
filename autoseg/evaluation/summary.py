"""Headline scores of one trained configuration for ``plan_and_train``: the mIoU of natural images, the mean Dice of
medical ones, computed with the evaluation's metric code (:mod:`autoseg.evaluation.metrics`).

PROTOCOL.md: natural-image results are dataset-level (IoU per class from one confusion matrix summed over all
images, every class including class 0 under its real name, e.g. CamVid's sky); medical results are per case (the
Dice of each class averaged over cases, background left out).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from autoseg.evaluation.dataset import DatasetInfo, dataset_info_from_json, read_segmentation
from autoseg.evaluation.metrics import case_metrics, nanmean_last, pooled_iou


def dataset_info(dataset_json: dict, name: str = "", path: Path | None = None) -> DatasetInfo:
    """What is scored, under which names (the converter's ``autoseg`` block: class 0 of a natural-image dataset is a
    class such as sky, although nnU-Net's ``labels`` must call it "background")."""
    return dataset_info_from_json(dataset_json, name or str(dataset_json.get("name", "")), path or Path("dataset.json"))


@dataclass
class Scores:
    """Per-class scores and their mean over one set of cases."""

    metric: str  # "iou" (natural images) or "dice" (medical)
    aggregation: str  # "dataset_confusion_matrix" or "per_case"
    per_class: dict[str, float]
    mean: float
    n_cases: int
    left_out: list[str]  # class names not in the mean on purpose (medical background)
    absent: list[str] = field(default_factory=list)  # classes in no reference and no prediction (NaN, not averaged)

    @property
    def headline(self) -> str:
        n = len(self.per_class) - len(self.absent)
        if self.metric == "iou":
            return f"mIoU over {n} classes (one confusion matrix over {self.n_cases} images)"
        return f"mean foreground Dice over {n} classes (mean over {self.n_cases} cases)"

    def as_dict(self) -> dict[str, Any]:
        clean = {k: (None if not math.isfinite(v) else v) for k, v in self.per_class.items()}
        return {"metric": self.metric, "aggregation": self.aggregation, "headline": self.headline,
                "mean": self.mean if math.isfinite(self.mean) else None, "per_class": clean,
                "n_cases": self.n_cases, "left_out": self.left_out, "absent": self.absent}


def score_pairs(pairs: Iterable[tuple[Path, Path]], info: DatasetInfo) -> Scores:
    """Score (prediction, reference) files: dataset-level IoU for natural images, case-mean Dice otherwise.

    For the medical Dice a case where a class is absent from both reference and prediction is left out of that
    class's mean, as nnU-Net's own summary does (its Dice is undefined there).
    """
    labels = info.evaluated_labels()
    counts = []  # per case: [n_labels, 3] tp, fp, fn
    dice: list[list[float]] = []
    n = 0
    for pred_path, ref_path in pairs:
        pred, _ = read_segmentation(Path(pred_path))
        ref, spacing = read_segmentation(Path(ref_path))
        if pred.shape != ref.shape:
            raise ValueError(f"{pred_path}: shape {pred.shape} differs from its reference {ref_path} {ref.shape}")
        rows = case_metrics(pred, ref, labels, spacing, ignore_label=info.ignore_label, distances=False)
        counts.append([[r["tp"], r["fp"], r["fn"]] for r in rows])
        dice.append([math.nan if r["ref_empty"] and r["pred_empty"] else r["dice"] for r in rows])
        n += 1
    names = [info.class_name(v) for v in labels]
    left = list(info.excluded_labels().values())
    if n == 0:
        return Scores("iou" if info.natural_image else "dice", "", {k: math.nan for k in names}, math.nan, 0, left)
    if info.natural_image:
        c = np.asarray(counts, dtype=np.float64)
        values = pooled_iou(c[..., 0], c[..., 1], c[..., 2], axis=0)
        metric, aggregation = "iou", "dataset_confusion_matrix"
    else:
        d = np.asarray(dice, dtype=np.float64)
        values = nanmean_last(d.T)
        metric, aggregation = "dice", "per_case"
    per_class = {k: float(v) for k, v in zip(names, values)}
    absent = [k for k, v in per_class.items() if not math.isfinite(v)]
    finite = [v for v in per_class.values() if math.isfinite(v)]
    return Scores(metric, aggregation, per_class, float(np.mean(finite)) if finite else math.nan, n, left, absent)


def validation_pairs(fold_dirs: Sequence[Path], gt_dir: Path, file_ending: str) -> list[tuple[Path, Path]]:
    """(prediction, reference) of nnU-Net's validation predictions of every fold against its gt_segmentations."""
    pairs = []
    for fold_dir in fold_dirs:
        for pred in sorted((Path(fold_dir) / "validation").glob(f"*{file_ending}")):
            ref = Path(gt_dir) / pred.name
            if not ref.is_file():
                raise FileNotFoundError(f"no reference {ref} for the validation prediction {pred}")
            pairs.append((pred, ref))
    return pairs


def folder_pairs(pred_dir: Path, ref_dir: Path, file_ending: str) -> list[tuple[Path, Path]]:
    """(prediction, reference) of every reference in ``ref_dir``; a missing prediction is an error."""
    refs = sorted(Path(ref_dir).glob(f"*{file_ending}"))
    missing = [r.name for r in refs if not (Path(pred_dir) / r.name).is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} reference(s) of {ref_dir} have no prediction in {pred_dir}: "
                                f"{', '.join(missing[:5])}")
    return [(Path(pred_dir) / r.name, r) for r in refs]


def validation_scores(fold_dirs: Sequence[Path], gt_dir: Path, dataset_json: dict) -> Scores:
    """Scores of nnU-Net's validation predictions of ``fold_dirs`` together (one confusion matrix for natural
    images, pooled over every validation image of every fold)."""
    pairs = validation_pairs(fold_dirs, gt_dir, str(dataset_json.get("file_ending", ".nii.gz")))
    return score_pairs(pairs, dataset_info(dataset_json))
