"""Medical Segmentation Decathlon tasks: 4D multi-modal images split into one file per channel.

Two layouts: a task folder as released (``dataset.json``, ``imagesTr``, ``labelsTr``,
``imagesTs``), and a plain ``images/`` + ``labels/`` pair with the same file names (as in
/work/shared/data/msd_hippocampus/data/TrainingSet), whose task is recognised by its file names.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from autoseg.data.convert import register
from autoseg.data.convert._io import read_label_any, read_sitk, visible_files
from autoseg.data.convert._write import DatasetPlan
from autoseg.data.convert.validate import CaseSpec, ConversionError, LabelSpec, Problem

# The ten tasks' dataset.json (modality, labels), for the plain layout that ships without it.
TASKS = {
    "BRATS": (1, "BrainTumour", {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"},
              {0: "background", 1: "edema", 2: "non-enhancing tumor", 3: "enhancing tumour"}),
    "la": (2, "Heart", {"0": "MRI"}, {0: "background", 1: "left atrium"}),
    "liver": (3, "Liver", {"0": "CT"}, {0: "background", 1: "liver", 2: "cancer"}),
    "hippocampus": (4, "Hippocampus", {"0": "MRI"}, {0: "background", 1: "Anterior", 2: "Posterior"}),
    "prostate": (5, "Prostate", {"0": "T2", "1": "ADC"}, {0: "background", 1: "PZ", 2: "TZ"}),
    "lung": (6, "Lung", {"0": "CT"}, {0: "background", 1: "cancer"}),
    "pancreas": (7, "Pancreas", {"0": "CT"}, {0: "background", 1: "pancreas", 2: "cancer"}),
    "hepaticvessel": (8, "HepaticVessel", {"0": "CT"}, {0: "background", 1: "Vessel", 2: "Tumour"}),
    "spleen": (9, "Spleen", {"0": "CT"}, {0: "background", 1: "spleen"}),
    "colon": (10, "Colon", {"0": "CT"}, {0: "background", 1: "colon cancer primaries"}),
}
ENDING = ".nii.gz"


def _stem(p: Path) -> str | None:
    if p.name.endswith(ENDING):
        return p.name[: -len(ENDING)]
    if p.name.endswith(".nii"):
        return p.name[:-4]
    return None


def _nifti(folder: Path) -> dict[str, Path]:
    return {s: p for p in visible_files(folder) if (s := _stem(p)) is not None}


@register("msd")
def msd(source: Path, *, limit: int | None = None) -> DatasetPlan:
    """Discover an MSD task folder or a plain images/labels pair; ``limit`` keeps the first N cases per split."""
    problems: list[Problem] = []
    if (source / "imagesTr").is_dir() and (source / "labelsTr").is_dir():
        img_dir, lab_dir, ts_dir = source / "imagesTr", source / "labelsTr", source / "imagesTs"
        layout = "MSD task folder"
        meta = _read_msd_json(source / "dataset.json")
    elif (source / "images").is_dir() and (source / "labels").is_dir():
        img_dir, lab_dir, ts_dir = source / "images", source / "labels", None
        layout = "images/labels"
        meta = None
    else:
        raise ConversionError(source, [Problem("-", "layout", "expected an MSD task folder (dataset.json, imagesTr, "
                                                              "labelsTr) or images/ and labels/ folders")])
    images, labels = _nifti(img_dir), _nifti(lab_dir)
    if meta is None:
        meta = _known_task(sorted(images) or sorted(labels), source)
    task_id, task_name, modalities, label_names = meta
    for name in sorted(set(images) - set(labels)):
        problems.append(Problem(name, "missing partner", f"{images[name].name} has no label in {lab_dir}"))
    for name in sorted(set(labels) - set(images)):
        problems.append(Problem(name, "missing partner", f"{labels[name].name} has no image in {img_dir}"))
    names = sorted(set(images) & set(labels))
    tests = sorted(_nifti(ts_dir)) if ts_dir is not None and ts_dir.is_dir() else []
    if limit is not None:
        names, tests = names[:limit], tests[:limit]
    cases = [CaseSpec(n, "train", [images[n], labels[n]], read_images=lambda p=images[n]: read_sitk(p),
                      read_label=lambda p=labels[n]: read_label_any(p)) for n in names]
    test_files = _nifti(ts_dir) if tests else {}
    cases += [CaseSpec(n, "test", [test_files[n]], read_images=lambda p=test_files[n]: read_sitk(p)) for n in tests]
    return DatasetPlan(
        name=task_name, default_id=610 + task_id if task_id else 610, source=source, cases=cases,
        labels=LabelSpec(source_values=set(label_names), lut=None, evaluated=[v for v in label_names if v != 0]),
        class_names=dict(label_names), channel_names=dict(modalities), file_ending=ENDING,
        expected_channels=len(modalities), problems=problems,
        metadata={"description": f"Medical Segmentation Decathlon {task_name}",
                  "reference": "Antonelli et al., The Medical Segmentation Decathlon, Nat. Commun. 2022; "
                               "http://medicaldecathlon.com",
                  "licence": "CC BY-SA 4.0"},
        autoseg={"source_kind": "msd", "source_layout": layout,
                 "protocol": "5-fold cross-validation over the labelled cases (MSD test labels are not public)"},
    )


def _read_msd_json(path: Path):
    if not path.is_file():
        raise ConversionError(path.parent, [Problem("-", "layout", f"{path} not found: an MSD task folder carries "
                                                                   "dataset.json with modality and labels")])
    try:
        dj = json.loads(path.read_text())
        modalities = {str(k): str(v) for k, v in dj["modality"].items()}
        labels = {int(k): str(v) for k, v in dj["labels"].items()}
    except (json.JSONDecodeError, KeyError, ValueError, AttributeError) as e:
        raise ConversionError(path.parent, [Problem("-", "layout", f"{path.name} is not an MSD dataset.json "
                                                                   f"({type(e).__name__}: {e})")]) from None
    m = re.match(r"Task(\d+)_(\w+)", str(dj.get("name", "")) or path.parent.name) or re.match(
        r"Task(\d+)_(\w+)", path.parent.name)
    name = re.sub(r"[^A-Za-z0-9_\-]", "", str(dj.get("name", "")) or path.parent.name) or "MSD"
    task_id, task_name = (int(m[1]), m[2]) if m else (0, name)
    if sorted(labels) != list(range(len(labels))):
        raise ConversionError(path.parent, [Problem("-", "labels", f"labels {sorted(labels)} in {path.name} are not "
                                                                   "0..N-1")])
    return task_id, task_name, modalities, labels


def _known_task(names: list[str], source: Path):
    for prefix, meta in TASKS.items():
        if names and all(n.lower().startswith(prefix.lower() + "_") for n in names):
            return meta
    raise ConversionError(source, [Problem("-", "layout", "plain images/labels layout without dataset.json and "
                                                          "file names of no known MSD task; use `autoseg convert "
                                                          "folder` with --label-names and --channel-names")])
