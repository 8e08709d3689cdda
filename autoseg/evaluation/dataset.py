"""What the evaluation knows of a dataset: its labels and real class names, whether it is a natural-image dataset,
where the reference segmentations are, and how to read a segmentation with its spacing."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from autoseg.evaluation.runs import Run, read_json


@dataclass
class DatasetInfo:
    """Labels of ``dataset.json`` and what autoseg's converter adds in its ``autoseg`` block.

    ``class_names`` maps a label value to its real name: nnU-Net insists that value 0 be called ``background`` in
    ``labels``, so a converted street scene keeps the real name of class 0 (CamVid's sky, Cityscapes' road) only in
    ``autoseg.class_names``. ``evaluated`` is the converter's ``autoseg.evaluated_classes`` when it wrote one.
    """

    name: str
    labels: dict[str, int]
    file_ending: str
    ignore_label: int | None
    natural_image: bool
    dataset_json: Path
    class_names: dict[int, str] = field(default_factory=dict)
    evaluated: list[int] | None = None

    def evaluated_labels(self) -> list[int]:
        """Labels to evaluate: every class but ``ignore``; label 0 only for natural images, where it is a real class
        whatever nnU-Net made us call it (PROTOCOL.md: no silent class drops)."""
        classes = {v for n, v in self.labels.items() if n != "ignore" and v != self.ignore_label}
        if self.evaluated is not None:
            return sorted(v for v in set(self.evaluated) if v in classes)
        return sorted(v for v in classes if v != 0 or self.natural_image)

    def excluded_labels(self) -> dict[int, str]:
        """Classes of the dataset left out on purpose (medical background), value -> name, for the report to say."""
        evaluated = set(self.evaluated_labels())
        return {v: self.class_name(v) for n, v in sorted(self.labels.items(), key=lambda x: x[1])
                if n != "ignore" and v != self.ignore_label and v not in evaluated}

    def class_name(self, label: int) -> str:
        if label in self.class_names:
            return self.class_names[label]
        for name, value in self.labels.items():
            if value == label and name != "ignore":
                return name
        return str(label)


def dataset_info_from_json(data: dict, name: str, path: Path, natural_image: bool | None = None) -> DatasetInfo:
    """A :class:`DatasetInfo` from the content of a ``dataset.json``; ``natural_image`` (from autoseg.json) wins
    over the file's flag, which is read from the ``autoseg`` block the converter writes (or a top-level key)."""
    labels: dict[str, int] = {}
    for label_name, value in (data.get("labels") or {}).items():
        if isinstance(value, (list, tuple)):
            raise ValueError(f"{path}: region-based label {label_name!r}={value} is not supported by the evaluation")
        labels[str(label_name)] = int(value)
    block = data.get("autoseg") if isinstance(data.get("autoseg"), dict) else {}
    ignore = labels.get("ignore")
    if natural_image is None:
        natural_image = bool(block.get("natural_image", data.get("natural_image", False)))
    class_names = {}
    for value, class_name in (block.get("class_names") or {}).items():
        try:
            class_names[int(value)] = str(class_name)
        except ValueError:
            raise ValueError(f"{path}: autoseg.class_names key {value!r} is not a label value") from None
    evaluated = block.get("evaluated_classes")
    if evaluated is not None:
        evaluated = [int(v) for v in evaluated]
    return DatasetInfo(name, labels, str(data.get("file_ending", ".nii.gz")), ignore, bool(natural_image), path,
                       class_names, evaluated)


def load_dataset_info(run: Run, preprocessed: Path | None, raw: Path | None) -> DatasetInfo:
    """The dataset.json of a run: nnU-Net's copy in the trainer folder, else the preprocessed or raw dataset's.

    The converter's ``autoseg`` block (real class names, natural-image flag) is read from the raw dataset.json
    when the copy found first lacks it (nnU-Net copies dataset.json verbatim, so normally it is there).
    """
    candidates = [run.path.parent / "dataset.json"]
    candidates += [Path(p) / run.dataset / "dataset.json" for p in (preprocessed, raw) if p]
    for path in candidates:
        data = read_json(path)
        if data is None:
            continue
        if "autoseg" not in data:
            extra = next((d for d in (read_json(p) for p in candidates[candidates.index(path) + 1:])
                          if d is not None and "autoseg" in d), None)
            if extra is not None:
                data = {**data, "autoseg": extra["autoseg"]}
        return dataset_info_from_json(data, run.dataset, path, run.natural_image)
    raise FileNotFoundError(f"no dataset.json for {run.dataset} (looked at {', '.join(map(str, candidates))})")


def read_segmentation(path: Path) -> tuple[np.ndarray, tuple[float, ...]]:
    """Label map in numpy axis order and its spacing in the same order (SimpleITK reads every nnU-Net format)."""
    import SimpleITK as sitk

    img = sitk.ReadImage(str(path))
    arr = sitk.GetArrayFromImage(img)
    if img.GetNumberOfComponentsPerPixel() > 1:
        arr = arr[..., 0]
    spacing = tuple(float(s) for s in reversed(img.GetSpacing()))[-arr.ndim:]
    return arr, spacing


def reference_for(case: str, info: DatasetInfo, run: Run, preprocessed: Path | None, raw: Path | None,
                  summary_refs: dict[str, str]) -> Path | None:
    """The reference segmentation of a validation case: preprocessed gt_segmentations, else the file nnU-Net's
    summary.json names, else the raw labelsTr."""
    candidates = []
    if preprocessed:
        candidates.append(Path(preprocessed) / run.dataset / "gt_segmentations" / f"{case}{info.file_ending}")
    if case in summary_refs:
        candidates.append(Path(summary_refs[case]))
    if raw:
        candidates.append(Path(raw) / run.dataset / "labelsTr" / f"{case}{info.file_ending}")
    return next((p for p in candidates if p.is_file()), None)
