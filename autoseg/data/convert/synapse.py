"""Synapse multi-organ CT (MICCAI 2015 BTCV): the original RawData release and TransUNet's preprocessed one.

Both become the same dataset: the 8 evaluated organs with fixed output values (below), the other
five organs as background, the 18 protocol training cases in imagesTr/labelsTr (5 frozen CV folds
in ``autoseg_splits.json``) and the 12 protocol test cases in imagesTs/labelsTs.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

import numpy as np

from autoseg.data.convert import register
from autoseg.data.convert._io import read_h5_volume, read_npz_slice, read_sitk
from autoseg.data.convert._write import DatasetPlan
from autoseg.data.convert.validate import CaseSpec, ImageData, LabelSpec, Problem, SourceReadError

# PROTOCOL.md (TransUNet's list): 18 training and 12 test volumes of the 30 labelled ones.
TRAIN_CASES = ("0005", "0006", "0007", "0009", "0010", "0021", "0023", "0024", "0026", "0027", "0028", "0030",
               "0031", "0033", "0034", "0037", "0039", "0040")
TEST_CASES = ("0001", "0002", "0003", "0004", "0008", "0022", "0025", "0029", "0032", "0035", "0036", "0038")

# Original label ids of the challenge (RawData/Training/label/labelXXXX.nii.gz).
ORIGINAL_LABELS = {
    0: "background", 1: "spleen", 2: "right kidney", 3: "left kidney", 4: "gallbladder", 5: "esophagus",
    6: "liver", 7: "stomach", 8: "aorta", 9: "inferior vena cava", 10: "portal and splenic vein", 11: "pancreas",
    12: "right adrenal gland", 13: "left adrenal gland",
}
# autoseg's output values: the 8 evaluated organs in the order of their original ids, which is
# the order of the TransUNet release (original 1,2,3,4,6,7,8,11 -> 1..8).
CLASS_NAMES = {0: "background", 1: "spleen", 2: "kidney_right", 3: "kidney_left", 4: "gallbladder", 5: "liver",
               6: "stomach", 7: "aorta", 8: "pancreas"}
ORIGINAL_TO_OUTPUT = {0: 0, 1: 1, 2: 2, 3: 3, 4: 4, 5: 0, 6: 5, 7: 6, 8: 7, 9: 0, 10: 0, 11: 8, 12: 0, 13: 0}
# TransUNet release: values 0..8 already in the order above. The release has no label table of
# its own; if yours differs, pass ``transunet_labels`` (release value -> organ name).
TRANSUNET_LABELS = {1: "spleen", 2: "kidney_right", 3: "kidney_left", 4: "gallbladder", 5: "liver", 6: "stomach",
                    7: "aorta", 8: "pancreas"}

_IMG = re.compile(r"^img(\d{4})\.nii(\.gz)?$")
_LABEL = re.compile(r"^label(\d{4})\.nii(\.gz)?$")
_SLICE = re.compile(r"^case(\d{4})_slice(\d+)\.npz$")
_VOLUME = re.compile(r"^case(\d{4})\.npy\.h5$")

METADATA = {
    "description": "Synapse multi-organ abdominal CT (MICCAI 2015 Multi-Atlas Labeling Beyond the Cranial Vault), "
                   "8 evaluated organs, TransUNet's 18/12 train/test split",
    "reference": "https://www.synapse.org/#!Synapse:syn3193805/wiki/217789; Chen et al. 2021, TransUNet "
                 "(arXiv:2102.04306)",
    "licence": "see the Synapse terms of use (no redistribution)",
}


def _find_raw(source: Path) -> Path | None:
    for cand in (source, source / "Training", source / "RawData" / "Training",
                 source / "Abdomen" / "RawData" / "Training", source / "RawData"):
        if (cand / "img").is_dir() and (cand / "label").is_dir():
            return cand
    return None


def _find_transunet(source: Path) -> Path | None:
    for cand in (source, source / "Synapse", source / "data" / "Synapse"):
        if (cand / "train_npz").is_dir() or (cand / "test_vol_h5").is_dir():
            return cand
    return None


def _case_name(num: str) -> str:
    return f"case{num}"


def _split_of(num: str) -> str | None:
    return "train" if num in TRAIN_CASES else "test" if num in TEST_CASES else None


@register("synapse")
def synapse(source: Path, *, layout: str = "auto", limit: int | None = None,
            transunet_labels: dict[int, str] | None = None) -> DatasetPlan:
    """Discover a Synapse source. ``layout``: "raw", "transunet" or "auto" (whichever is found).

    ``limit`` keeps the first N protocol cases of each split (tests, quick looks); without it
    every one of the 30 protocol cases must be present.
    """
    if layout not in ("auto", "raw", "transunet"):
        raise ValueError(f"layout must be 'auto', 'raw' or 'transunet', got {layout!r}")
    raw = _find_raw(source) if layout in ("auto", "raw") else None
    tu = _find_transunet(source) if layout in ("auto", "transunet") and raw is None else None
    if raw is None and tu is None:
        wanted = {"auto": "RawData/Training/{img,label}/ or train_npz/ and test_vol_h5/",
                  "raw": "RawData/Training/{img,label}/", "transunet": "train_npz/ and test_vol_h5/"}[layout]
        from autoseg.data.convert.validate import ConversionError

        raise ConversionError(source, [Problem("-", "layout", f"no Synapse release found: expected {wanted}")])
    if raw is not None:
        plan = _raw_plan(raw, limit)
    else:
        plan = _transunet_plan(tu, limit, transunet_labels)
    plan.source = source
    return plan


def _base_plan(source: Path, cases: list[CaseSpec], labels: LabelSpec, channel: str, layout: str) -> DatasetPlan:
    return DatasetPlan(
        name="Synapse", default_id=601, source=source, cases=cases, labels=labels,
        class_names=dict(CLASS_NAMES), channel_names={"0": channel}, file_ending=".nii.gz",
        expected_channels=1, metadata=dict(METADATA),
        autoseg={"source_kind": "synapse", "source_layout": layout,
                 "protocol": "train on train_split (5-fold CV inside it), test on test_split (imagesTs/labelsTs)"},
    )


def _select(found: dict[str, object], limit: int | None, problems: list[Problem], what: str) -> list[str]:
    """Protocol cases present in ``found``, in order; reports missing ones (unless limited) and extras."""
    chosen = []
    for split, ids in (("train", TRAIN_CASES), ("test", TEST_CASES)):
        present = [i for i in ids if i in found]
        if limit is None:
            for i in ids:
                if i not in found:
                    problems.append(Problem(_case_name(i), "missing partner",
                                            f"protocol {split} case not found in {what}"))
        else:
            present = present[:limit]
        chosen += present
    return chosen


def _raw_plan(folder: Path, limit: int | None) -> DatasetPlan:
    problems: list[Problem] = []
    warnings: list[str] = []
    imgs = {m[1]: p for p in (folder / "img").iterdir() if (m := _IMG.match(p.name))}
    labs = {m[1]: p for p in (folder / "label").iterdir() if (m := _LABEL.match(p.name))}
    for num in sorted(set(imgs) - set(labs)):
        problems.append(Problem(_case_name(num), "missing partner", f"{imgs[num].name} has no label{num}.nii.gz"))
    for num in sorted(set(labs) - set(imgs)):
        problems.append(Problem(_case_name(num), "missing partner", f"{labs[num].name} has no img{num}.nii.gz"))
    extra = sorted(n for n in set(imgs) | set(labs) if _split_of(n) is None)
    if extra:
        warnings.append(f"cases outside the 18/12 protocol skipped: {', '.join(_case_name(n) for n in extra)}")
    both = {n: 1 for n in set(imgs) & set(labs)}
    missing_partner = set(imgs) ^ set(labs)
    chosen = _select({**both, **{n: 1 for n in missing_partner}}, limit, problems, f"{folder}/img and label")
    cases = []
    for num in chosen:
        if num not in both:
            continue
        img, lab = imgs[num], labs[num]
        cases.append(CaseSpec(_case_name(num), _split_of(num), [img, lab],
                              read_images=lambda img=img: _single(read_sitk(img), img),
                              read_label=lambda lab=lab: _single(read_sitk(lab), lab)[0]))
    labels = LabelSpec(source_values=set(ORIGINAL_LABELS), lut=dict(ORIGINAL_TO_OUTPUT), evaluated=list(range(1, 9)))
    # Raw HU: nnU-Net's CT normalisation (dataset-wide percentile clipping and z-scoring).
    plan = _base_plan(folder, cases, labels, "CT", "raw")
    plan.problems, plan.warnings = problems, warnings
    plan.autoseg["original_labels"] = {str(k): v for k, v in ORIGINAL_LABELS.items()}
    return plan


def _single(images: list[ImageData], path: Path) -> list[ImageData]:
    if len(images) != 1 or images[0].array.ndim != 3:
        raise SourceReadError(f"{path.name}: expected one 3D volume, found shape "
                              f"{[im.array.shape for im in images]}")
    return images


def _stack_slices(paths: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for p in paths:
        im, lab = read_npz_slice(p)
        if images and im.shape != images[0].shape:
            raise SourceReadError(f"{p.name}: slice shape {im.shape} differs from {images[0].shape} of "
                                  f"{paths[0].name}")
        if lab.shape != im.shape:
            raise SourceReadError(f"{p.name}: label shape {lab.shape} differs from image shape {im.shape}")
        images.append(im)
        labels.append(lab)
    return np.stack(images), np.stack(labels)


def _transunet_plan(folder: Path, limit: int | None, transunet_labels: dict[int, str] | None) -> DatasetPlan:
    problems: list[Problem] = []
    warnings: list[str] = []
    slices: dict[str, dict[int, Path]] = defaultdict(dict)
    if (folder / "train_npz").is_dir():
        for p in (folder / "train_npz").iterdir():
            if m := _SLICE.match(p.name):
                slices[m[1]][int(m[2])] = p
    volumes = {}
    if (folder / "test_vol_h5").is_dir():
        volumes = {m[1]: p for p in (folder / "test_vol_h5").iterdir() if (m := _VOLUME.match(p.name))}
    for num in sorted(slices):
        if num in TEST_CASES:
            problems.append(Problem(_case_name(num), "split", "protocol test case found among the training slices "
                                                              "(train_npz): test data would leak into training"))
        idx = sorted(slices[num])
        gaps = sorted(set(range(idx[-1] + 1)) - set(idx))
        if gaps:
            problems.append(Problem(_case_name(num), "missing partner",
                                    f"train_npz lacks slice(s) {gaps[:10]}{' ...' if len(gaps) > 10 else ''} "
                                    f"of {idx[-1] + 1}"))
    for num in sorted(volumes):
        if num in TRAIN_CASES:
            problems.append(Problem(_case_name(num), "split", "protocol training case found among the test volumes "
                                                              "(test_vol_h5)"))
    extra = sorted(n for n in set(slices) | set(volumes) if _split_of(n) is None)
    if extra:
        warnings.append(f"cases outside the 18/12 protocol skipped: {', '.join(_case_name(n) for n in extra)}")
    found = {n: 1 for n in slices if n in TRAIN_CASES} | {n: 1 for n in volumes if n in TEST_CASES}
    chosen = _select(found, limit, problems, f"{folder}/train_npz and test_vol_h5")
    cases = []
    for num in chosen:
        if num in TRAIN_CASES:
            paths = [slices[num][i] for i in sorted(slices[num])]
            loader = _cached(lambda paths=paths: _stack_slices(paths))
            cases.append(CaseSpec(_case_name(num), "train", paths,
                                  read_images=lambda ld=loader, p=paths: [ImageData(ld()[0], str(p[0].parent))],
                                  read_label=lambda ld=loader, p=paths: ImageData(ld()[1], str(p[0].parent))))
        else:
            path = volumes[num]
            loader = _cached(lambda path=path: read_h5_volume(path))
            cases.append(CaseSpec(_case_name(num), "test", [path],
                                  read_images=lambda ld=loader, p=path: [ImageData(ld()[0], str(p))],
                                  read_label=lambda ld=loader, p=path: ImageData(ld()[1], str(p))))
    names = dict(TRANSUNET_LABELS if transunet_labels is None else {int(k): v for k, v in transunet_labels.items()})
    by_name = {v: k for k, v in CLASS_NAMES.items()}
    unknown = sorted(set(names.values()) - set(by_name))
    if unknown or len(names) != 8 or len(set(names.values())) != 8:
        raise ValueError(f"transunet_labels must name the 8 organs {sorted(by_name)[1:]} once each, got {names}")
    lut = {0: 0, **{k: by_name[v] for k, v in names.items()}}
    labels = LabelSpec(source_values=set(lut), lut=lut, evaluated=list(range(1, 9)))
    # Already clipped to [-125, 275] HU and scaled to [0, 1]: CT normalisation would be wrong.
    plan = _base_plan(folder, cases, labels, "zscore", "transunet")
    plan.problems, plan.warnings = problems, warnings
    plan.autoseg["transunet_labels"] = {str(k): v for k, v in sorted(names.items())}
    plan.autoseg["spacing_note"] = ("the TransUNet release has no voxel spacing; volumes are written with 1 x 1 x 1, "
                                    "so distances (HD95) are in voxels, as in TransUNet's own evaluation")
    plan.on_validated = _check_liver_largest
    return plan


def _cached(fn):
    """Validation reads a case's images, then its label: read the slices or h5 file only once for both."""
    box: dict = {}

    def get():
        if "v" not in box:
            box["v"] = fn()
        value = box["v"]
        box["n"] = box.get("n", 0) + 1
        if box["n"] >= 2:  # images and label taken: free the memory
            box.clear()
        return value

    return get


def _check_liver_largest(plan: DatasetPlan, report) -> None:
    """The release has no label table: warn if the value taken as liver is not the largest organ.

    The liver is by far the largest of the 8 organs in every Synapse volume, so a release whose
    values follow another order shows up here before anyone trains on mislabelled organs.
    """
    liver = next((k for k, v in plan.labels.lut.items() if v == 5), None)
    counts = {k: c for k, c in report.raw_counts.items() if k != 0}
    if counts and liver is not None and max(counts, key=counts.get) != liver:
        biggest = max(counts, key=counts.get)
        report.warnings.append(
            f"label value {biggest} covers the most voxels but value {liver} is taken as the liver: the label order "
            "of this TransUNet release may differ from autoseg's assumption; check and pass transunet_labels")
