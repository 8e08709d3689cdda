"""CamVid in the SegNet layout (train/trainannot, val/valannot, test/testannot): 11 classes, void 11 ignored."""

from __future__ import annotations

from pathlib import Path

from autoseg.data.convert import register
from autoseg.data.convert._io import read_2d
from autoseg.data.convert._write import DatasetPlan
from autoseg.data.convert.cityscapes import parse_size
from autoseg.data.convert.validate import CaseSpec, LabelSpec, Problem

# SegNet's 11-class CamVid (values in the *annot PNGs); 11 is void, SegNet's ignore label.
CLASSES = {0: "sky", 1: "building", 2: "pole", 3: "road", 4: "pavement", 5: "tree", 6: "sign_symbol", 7: "fence",
           8: "car", 9: "pedestrian", 10: "bicyclist"}
VOID = 11

METADATA = {
    "description": "CamVid street scenes, SegNet's 11-class version; train+val for training, test as the test set",
    "reference": "Brostow, Fauqueur, Cipolla, Pattern Recognition Letters 2009; Badrinarayanan et al., SegNet, "
                 "TPAMI 2017",
    "licence": "research use; cite the papers",
}


def _find(source: Path) -> Path | None:
    for cand in (source, source / "CamVid"):
        if (cand / "train").is_dir() and (cand / "trainannot").is_dir():
            return cand
    return None


@register("camvid")
def camvid(source: Path, *, size: str | tuple[int, int] | None = None, limit: int | None = None) -> DatasetPlan:
    """Discover the SegNet layout under ``source`` (or ``source/CamVid``); folders are globbed.

    train and val go to imagesTr (fold 5 of ``autoseg_splits.json`` is SegNet's own train/val
    split, folds 0-4 are the usual cross-validation), test to imagesTs/labelsTs. ``limit`` keeps
    the first N images of each of the three splits.
    """
    folder = _find(source)
    problems: list[Problem] = []
    cases: list[CaseSpec] = []
    official: dict[str, list[str]] = {"train": [], "val": []}
    if folder is None:
        problems.append(Problem("-", "layout", f"no CamVid SegNet layout under {source} (expected "
                                               "train/ and trainannot/, or CamVid/train/ ...)"))
    else:
        for split, out_split in (("train", "train"), ("val", "train"), ("test", "test")):
            img_dir, ann_dir = folder / split, folder / f"{split}annot"
            if not img_dir.is_dir() or not ann_dir.is_dir():
                problems.append(Problem("-", "layout", f"split {split!r} missing: need {img_dir} and {ann_dir}"))
                continue
            images = {p.stem: p for p in img_dir.glob("*.png") if not p.name.startswith(".")}
            labels = {p.stem: p for p in ann_dir.glob("*.png") if not p.name.startswith(".")}
            for name in sorted(set(images) - set(labels)):
                problems.append(Problem(name, "missing partner", f"{split}/{name}.png has no {split}annot/{name}.png"))
            for name in sorted(set(labels) - set(images)):
                problems.append(Problem(name, "missing partner", f"{split}annot/{name}.png has no {split}/{name}.png"))
            names = sorted(set(images) & set(labels))
            if limit is not None:
                names = names[:limit]
            if split in official:
                official[split] = names
            for name in names:
                img, lab = images[name], labels[name]
                cases.append(CaseSpec(name, out_split, [img, lab], read_images=lambda img=img: [read_2d(img)],
                                      read_label=lambda lab=lab: read_2d(lab)))
    extra = [{"train": official["train"], "val": official["val"]}] if official["train"] and official["val"] else []
    return DatasetPlan(
        name="CamVid", default_id=603, source=source, cases=cases,
        labels=LabelSpec(source_values=set(range(VOID + 1)), lut=None, evaluated=list(CLASSES)),
        class_names=dict(CLASSES), channel_names={"0": "R", "1": "G", "2": "B"}, file_ending=".png",
        natural_image=True, ignore_label=VOID, expected_channels=3, resize=parse_size(size), problems=problems,
        extra_folds=extra, metadata=dict(METADATA),
        autoseg={"source_kind": "camvid", "source_layout": "SegNet",
                 "protocol": "train on train_split (SegNet train+val; fold 5 = SegNet's train/val split, folds 0-4 "
                             "= 5-fold CV), test on SegNet's test set (imagesTs/labelsTs)",
                 "official_val": official["val"]},
    )
