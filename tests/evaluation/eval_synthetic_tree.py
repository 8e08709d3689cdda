"""Builds tiny nnU-Net results trees of known structure for the evaluation tests (not a test module)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

DATASET = "Dataset999_Toy"
SHAPE = (6, 12, 12)
SPACING = (2.0, 1.0, 1.0)  # numpy axis order, mm
LABELS = {"background": 0, "organ": 1, "tumour": 2}
NATURAL_CLASS_NAMES = {"0": "sky", "1": "organ", "2": "tumour"}  # a natural-image tree: class 0 is a real class


def write_seg(path: Path, arr: np.ndarray, spacing=SPACING) -> None:
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(tuple(float(s) for s in reversed(spacing)))
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path))


def reference(i: int) -> np.ndarray:
    """Organ: a box whose size varies with the case; tumour: a small box, absent from case 0 (the empty class)."""
    ref = np.zeros(SHAPE, np.uint8)
    w = 3 + i % 3
    ref[1:5, 6 - w:6 + w, 6 - w:6 + w] = 1
    if i != 0:
        ref[2:4, 5:7, 5:7] = 2
    return ref


def shifted(arr: np.ndarray, by: int) -> np.ndarray:
    return np.roll(arr, by, axis=2)


PREDICT = {
    # exact: better than everything else on every case
    "good": lambda ref, i: ref.copy(),
    # one voxel to the right and to the left: the same metrics on these symmetric shapes, indistinguishable
    "twin_a": lambda ref, i: shifted(ref, 1),
    "twin_b": lambda ref, i: shifted(ref, -1),
    # three voxels off, and a tumour predicted in case 0 where there is none
    "bad": lambda ref, i: _bad(ref, i),
}


def _bad(ref: np.ndarray, i: int) -> np.ndarray:
    out = shifted(ref, 3)
    if i == 0:
        out[2:4, 1:3, 1:3] = 2
    return out


def build_tree(root: Path, cases_per_fold=(10, 4), methods=("good", "twin_a", "twin_b", "bad"),
               missing=(("twin_b", 1),), failed=("broken",), progress_png=True, natural=False) -> dict:
    """``root/results``, ``root/preprocessed`` and ``root/raw`` of one dataset; returns their paths.

    Fold f holds ``cases_per_fold[f]`` cases. ``missing`` lists (method, fold) folders left out; ``failed`` methods
    have autoseg.json status "failed" and no predictions.
    """
    results, pre, raw = root / "results", root / "preprocessed", root / "raw"
    dataset_json = {"labels": LABELS, "file_ending": ".nii.gz", "numTraining": sum(cases_per_fold),
                    "channel_names": {"0": "CT"}}
    if natural:  # as autoseg's converter writes it: the flag and the real name of class 0 in the autoseg block
        dataset_json["autoseg"] = {"natural_image": True, "class_names": NATURAL_CLASS_NAMES,
                                   "evaluated_classes": [0, 1, 2], "aggregation": "dataset_confusion_matrix"}
    (pre / DATASET).mkdir(parents=True, exist_ok=True)
    (pre / DATASET / "dataset.json").write_text(json.dumps(dataset_json))
    rng = np.random.default_rng(0)
    case_ids: list[list[str]] = []
    n = 0
    for count in cases_per_fold:
        ids = []
        for _ in range(count):
            case = f"toy_{n:03d}"
            ref = reference(n)
            write_seg(pre / DATASET / "gt_segmentations" / f"{case}.nii.gz", ref)
            image = (ref * 100 + rng.normal(0, 10, SHAPE)).astype(np.float32)
            write_seg(raw / DATASET / "imagesTr" / f"{case}_0000.nii.gz", image)
            ids.append(case)
            n += 1
        case_ids.append(ids)
    for method in list(methods) + list(failed):
        trainer = f"nnUNetTrainer_autoseg_{method}"
        base = results / DATASET / f"{trainer}__nnUNetPlans__3d_fullres"
        base.mkdir(parents=True, exist_ok=True)
        (base / "dataset.json").write_text(json.dumps(dataset_json))
        for fold, ids in enumerate(case_ids):
            if (method, fold) in missing:
                continue
            fold_dir = base / f"fold_{fold}"
            fold_dir.mkdir(parents=True, exist_ok=True)
            meta = {"loss": method, "loss_args": {}, "trainer": trainer, "plans": "nnUNetPlans",
                    "configuration": "3d_fullres", "architecture": "cnn",
                    "budget": {"name": "quick", "epochs": 2, "iterations_per_epoch": 3},
                    "dataset": DATASET, "fold": fold, "seed": 0,
                    "status": "failed" if method in failed else "done", "natural_image": natural,
                    "device": "cpu", "seconds": 12.0 + fold}
            (fold_dir / "autoseg.json").write_text(json.dumps(meta))
            if method in failed:
                continue
            for case in ids:
                i = int(case.split("_")[1])
                write_seg(fold_dir / "validation" / f"{case}.nii.gz", PREDICT[method](reference(i), i))
            if progress_png:
                from PIL import Image

                Image.fromarray(np.full((20, 30, 3), 40 * fold + 60, np.uint8)).save(fold_dir / "progress.png")
                (fold_dir / "training_log_2026_1_1_00_00_00.txt").write_text(training_log(method))
    return {"results": results, "preprocessed": pre, "raw": raw, "cases": case_ids}


def training_log(method: str, epochs: int = 2) -> str:
    """nnU-Net's log lines for a few epochs (NumPy 2 prints the pseudo Dice as np.float32(...))."""
    quality = {"good": 0.9, "twin_a": 0.6, "twin_b": 0.6, "bad": 0.2}.get(method, 0.5)
    lines = ["", "2026-01-01 00:00:00.000001: Unable to plot network architecture: "]
    for e in range(epochs):
        d = quality * (e + 1) / epochs
        lines += [f"2026-01-01 00:00:0{e}.000001: Epoch {e} ",
                  f"2026-01-01 00:00:0{e}.000002: train_loss {-d:.4f} ",
                  f"2026-01-01 00:00:0{e}.000003: val_loss {-d + 0.05:.4f} ",
                  f"2026-01-01 00:00:0{e}.000004: Pseudo dice [np.float32({d:.4f}), np.float32({d / 2:.4f})] ",
                  f"2026-01-01 00:00:0{e}.000005: Epoch time: 1.5 s "]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------ the A-versus-B example
# 30 street-scene-like images stored as nnU-Net stores 2D data: 1 x H x W with the dummy spacing 999 on axis 0.
AB_DATASET = "Dataset998_StreetAB"
AB_SHAPE = (1, 40, 40)
AB_SPACING = (999.0, 1.0, 1.0)
AB_CLASS_NAMES = {"0": "sky", "1": "road", "2": "car", "3": "sign"}
AB_SIGN_IMAGES = (0, 10, 20)


def ab_reference(i: int) -> np.ndarray:
    """Sky above road; a car in every other image; a sign in three images only."""
    ref = np.zeros(AB_SHAPE, np.uint8)
    ref[0, 20:] = 1
    if i % 2 == 0:
        c = 5 + i % 10
        ref[0, 24:32, c:c + 8] = 2
    if i in AB_SIGN_IMAGES:
        ref[0, 5:12, 20:27] = 3
    return ref


def ab_predict_a(ref: np.ndarray, i: int) -> np.ndarray:
    """Method A: exact, plus one stray 'sign' pixel in every image that has no sign. Its dataset-level mIoU is high
    (27 stray pixels against 147 sign pixels); per image, the absent class it touches scores IoU 0."""
    out = ref.copy()
    if i not in AB_SIGN_IMAGES:
        out[0, 2, 2] = 3
    return out


def ab_predict_b(ref: np.ndarray, i: int) -> np.ndarray:
    """Method B: no stray pixels, but every boundary is off: the horizon two rows low, the car cut short by two
    columns (one in every sixth image), the sign by one. Dataset-level mIoU 86.1 % against A's 96.1 %."""
    out = ref.copy()
    out[0, 20:22][out[0, 20:22] == 1] = 0
    for label, cut in ((2, 1 if i % 6 == 0 else 2), (3, 1)):
        cols = np.flatnonzero((ref[0] == label).any(axis=0))
        if cols.size:
            rows = np.flatnonzero((ref[0] == label).any(axis=1))
            out[0, rows[0]:rows[-1] + 1, cols[-cut]:cols[-1] + 1] = 1 if label == 2 else 0
    return out


def build_ab_tree(root: Path, n_images: int = 30, folds: int = 3) -> dict:
    """A converted natural-image dataset (flag and class names in dataset.json's autoseg block, label 0 called
    "background" as nnU-Net requires) with two losses, ``A`` and ``B``, over ``folds`` folds; no autoseg.json in the
    fold folders (plain nnU-Net runs: the flag must come from dataset.json)."""
    results, pre = root / "results", root / "preprocessed"
    dataset_json = {"labels": {"background": 0, "road": 1, "car": 2, "sign": 3}, "file_ending": ".nii.gz",
                    "numTraining": n_images, "channel_names": {"0": "R", "1": "G", "2": "B"},
                    "autoseg": {"natural_image": True, "class_names": AB_CLASS_NAMES,
                                "evaluated_classes": [0, 1, 2, 3], "aggregation": "dataset_confusion_matrix"}}
    (pre / AB_DATASET).mkdir(parents=True, exist_ok=True)
    (pre / AB_DATASET / "dataset.json").write_text(json.dumps(dataset_json))
    for i in range(n_images):
        write_seg(pre / AB_DATASET / "gt_segmentations" / f"street_{i:03d}.nii.gz", ab_reference(i), AB_SPACING)
    for method, predict in (("A", ab_predict_a), ("B", ab_predict_b)):
        base = results / AB_DATASET / f"nnUNetTrainer_autoseg_{method}__nnUNetPlans__2d"
        base.mkdir(parents=True, exist_ok=True)
        (base / "dataset.json").write_text(json.dumps(dataset_json))
        for i in range(n_images):
            fold_dir = base / f"fold_{i % folds}"
            write_seg(fold_dir / "validation" / f"street_{i:03d}.nii.gz", predict(ab_reference(i), i), AB_SPACING)
            (fold_dir / "checkpoint_final.pth").write_bytes(b"")
    return {"results": results, "preprocessed": pre}
