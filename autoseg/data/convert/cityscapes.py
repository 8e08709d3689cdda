"""Cityscapes fine annotations: labelIds mapped to the 19 training classes, everything else ignored.

Train images go to imagesTr/labelsTr, val images to imagesTs/labelsTs (the test labels are not
public, so val is the test set). Output values are the official train ids 0..18; ignore is 19.
"""

from __future__ import annotations

from pathlib import Path

from autoseg.data.convert import register
from autoseg.data.convert._io import read_2d
from autoseg.data.convert._write import DatasetPlan
from autoseg.data.convert.validate import CaseSpec, LabelSpec, Problem

# The official table (cityscapesscripts/helpers/labels.py): labelId -> trainId for the 19
# evaluated classes. Every other labelId 0..33 has trainId 255 (ignored); -1 (licence plate) is
# never drawn into labelIds images.
TRAIN_CLASSES = [
    # (labelId, trainId, name)
    (7, 0, "road"), (8, 1, "sidewalk"), (11, 2, "building"), (12, 3, "wall"), (13, 4, "fence"),
    (17, 5, "pole"), (19, 6, "traffic light"), (20, 7, "traffic sign"), (21, 8, "vegetation"),
    (22, 9, "terrain"), (23, 10, "sky"), (24, 11, "person"), (25, 12, "rider"), (26, 13, "car"),
    (27, 14, "truck"), (28, 15, "bus"), (31, 16, "train"), (32, 17, "motorcycle"), (33, 18, "bicycle"),
]
IGNORE = 19
LABEL_IDS = range(34)

METADATA = {
    "description": "Cityscapes fine annotations, 19 training classes (train ids), val used as the test set",
    "reference": "Cordts et al., The Cityscapes Dataset for Semantic Urban Scene Understanding, CVPR 2016; "
                 "https://www.cityscapes-dataset.com",
    "licence": "Cityscapes terms of use (no redistribution)",
}


def parse_size(size: str | tuple[int, int] | None) -> tuple[int, int] | None:
    """``"512x512"`` or ``(512, 512)`` -> (width, height); None stays None."""
    if size is None:
        return None
    if isinstance(size, str):
        parts = size.lower().split("x")
        if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
            raise ValueError(f"size must look like WIDTHxHEIGHT, e.g. 512x512, got {size!r}")
        size = (int(parts[0]), int(parts[1]))
    w, h = (int(v) for v in size)
    if w < 1 or h < 1:
        raise ValueError(f"size must be positive, got {size!r}")
    return w, h


@register("cityscapes")
def cityscapes(source: Path, *, size: str | tuple[int, int] | None = None, limit: int | None = None) -> DatasetPlan:
    """Discover ``leftImg8bit/{train,val}`` and ``gtFine/{train,val}`` under ``source``.

    ``size`` (WIDTHxHEIGHT) resizes images bilinearly and labels by nearest neighbour; the survey
    trained at 512x512. ``limit`` keeps the first N images of each split.
    """
    problems: list[Problem] = []
    for sub in ("leftImg8bit", "gtFine"):
        if not (source / sub).is_dir():
            problems.append(Problem("-", "layout", f"{source / sub} not found (expected leftImg8bit/ and gtFine/)"))
    cases: list[CaseSpec] = []
    for split, out_split in (("train", "train"), ("val", "test")) if not problems else ():
        img_dir, gt_dir = source / "leftImg8bit" / split, source / "gtFine" / split
        if not img_dir.is_dir() or not gt_dir.is_dir():
            problems.append(Problem("-", "layout", f"split {split!r} missing: need {img_dir} and {gt_dir}"))
            continue
        images = {p.name[: -len("_leftImg8bit.png")]: p for p in img_dir.glob("*/*_leftImg8bit.png")}
        labels = {p.name[: -len("_gtFine_labelIds.png")]: p for p in gt_dir.glob("*/*_gtFine_labelIds.png")}
        for name in sorted(set(images) - set(labels)):
            problems.append(Problem(name, "missing partner", f"{images[name].name} has no "
                                                             f"{name}_gtFine_labelIds.png in {gt_dir}"))
        for name in sorted(set(labels) - set(images)):
            problems.append(Problem(name, "missing partner", f"{labels[name].name} has no "
                                                             f"{name}_leftImg8bit.png in {img_dir}"))
        names = sorted(set(images) & set(labels))
        if limit is not None:
            names = names[:limit]
        for name in names:
            img, lab = images[name], labels[name]
            cases.append(CaseSpec(name, out_split, [img, lab], read_images=lambda img=img: [read_2d(img)],
                                  read_label=lambda lab=lab: read_2d(lab)))
    lut = {i: IGNORE for i in LABEL_IDS}
    lut.update({label_id: train_id for label_id, train_id, _ in TRAIN_CLASSES})
    plan = DatasetPlan(
        name="Cityscapes", default_id=602, source=source, cases=cases,
        labels=LabelSpec(source_values=set(LABEL_IDS), lut=lut, evaluated=list(range(19))),
        class_names={train_id: name for _, train_id, name in TRAIN_CLASSES},
        channel_names={"0": "R", "1": "G", "2": "B"}, file_ending=".png", natural_image=True,
        ignore_label=IGNORE, expected_channels=3, resize=parse_size(size), problems=problems,
        metadata=dict(METADATA),
        autoseg={"source_kind": "cityscapes", "source_layout": "leftImg8bit/gtFine labelIds",
                 "protocol": "train on train_split (5-fold CV inside it), test on the official val set "
                             "(imagesTs/labelsTs)"},
    )
    return plan
