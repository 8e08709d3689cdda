"""Tiny sources that mimic each dataset's real layout (names, folders, ids, dtypes, npz/h5 keys)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

# From PROTOCOL.md, written out here rather than imported from the code under test.
SYNAPSE_TRAIN = ["0005", "0006", "0007", "0009", "0010", "0021", "0023", "0024", "0026", "0027", "0028", "0030",
                 "0031", "0033", "0034", "0037", "0039", "0040"]
SYNAPSE_TEST = ["0001", "0002", "0003", "0004", "0008", "0022", "0025", "0029", "0032", "0035", "0036", "0038"]
SYNAPSE_SPACING = (0.78, 0.78, 3.0)
SYNAPSE_ORIGIN = (-170.0, -190.5, -300.0)


def _sitk_write(arr: np.ndarray, path: Path, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=None):
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    if direction is not None:
        img.SetDirection(direction)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path), True)


def synapse_label_volume() -> np.ndarray:
    """(z=4, y=4, x=4): original id k (0..13) at the flat voxel k, liver (6) filling the rest of z=3."""
    lab = np.zeros((4, 4, 4), dtype=np.uint8)
    flat = lab.reshape(-1)
    flat[:14] = np.arange(14)
    lab[3] = 6
    return lab


def make_synapse_raw(root: Path, skip_label: tuple[str, ...] = ()) -> Path:
    """``RawData/Training/img/imgXXXX.nii.gz`` and ``label/labelXXXX.nii.gz`` (int16 HU, uint8 labels)."""
    training = root / "RawData" / "Training"
    rng = np.random.default_rng(0)
    for num in SYNAPSE_TRAIN + SYNAPSE_TEST:
        img = rng.integers(-1000, 1000, size=(4, 4, 4)).astype(np.int16)
        _sitk_write(img, training / "img" / f"img{num}.nii.gz", SYNAPSE_SPACING, SYNAPSE_ORIGIN)
        if num not in skip_label:
            _sitk_write(synapse_label_volume(), training / "label" / f"label{num}.nii.gz", SYNAPSE_SPACING,
                        SYNAPSE_ORIGIN)
    # the unlabelled challenge test set sits beside Training in the release
    _sitk_write(np.zeros((4, 4, 4), np.int16), root / "RawData" / "Testing" / "img" / "img0061.nii.gz")
    return root


def transunet_label_slice(z: int) -> np.ndarray:
    """8x8 slice: values 0..8 at the first 9 pixels, liver (5) on the two last rows (the biggest organ)."""
    lab = np.zeros((8, 8), dtype=np.float32)
    lab.reshape(-1)[:9] = np.arange(9)
    lab[6:] = 5
    lab[0, 0] = 0
    return lab


def transunet_image_slice(case: str, z: int) -> np.ndarray:
    return (np.full((8, 8), int(case) / 100.0 + z / 1000.0, dtype=np.float32))


def make_synapse_transunet(root: Path, n_slices: int = 3) -> Path:
    """``train_npz/caseXXXX_sliceYYY.npz`` (keys image, label) and ``test_vol_h5/caseXXXX.npy.h5``."""
    import h5py

    (root / "train_npz").mkdir(parents=True)
    (root / "test_vol_h5").mkdir()
    for num in SYNAPSE_TRAIN:
        for z in range(n_slices):
            np.savez(root / "train_npz" / f"case{num}_slice{z:03d}.npz", image=transunet_image_slice(num, z),
                     label=transunet_label_slice(z))
    for num in SYNAPSE_TEST:
        with h5py.File(root / "test_vol_h5" / f"case{num}.npy.h5", "w") as f:
            f["image"] = np.stack([transunet_image_slice(num, z) for z in range(n_slices)])
            f["label"] = np.stack([transunet_label_slice(z) for z in range(n_slices)])
    (root / "lists_Synapse").mkdir()
    (root / "lists_Synapse" / "train.txt").write_text("\n".join(f"case{n}_slice000" for n in SYNAPSE_TRAIN))
    return root


def cityscapes_label(h: int = 12, w: int = 16) -> np.ndarray:
    """labelIds 0..33 in 2x2 blocks (row-major), then id 7 (road) for the remaining blocks."""
    blocks = np.full((h // 2) * (w // 2), 7, dtype=np.uint8)
    blocks[:34] = np.arange(34)
    return np.kron(blocks.reshape(h // 2, w // 2), np.ones((2, 2), dtype=np.uint8))


CITYSCAPES_FILES = {
    "train": ["aachen_000000_000019", "aachen_000001_000019", "bochum_000000_000313"],
    "val": ["frankfurt_000000_000294", "lindau_000000_000019"],
    "test": ["berlin_000000_000019"],
}


def make_cityscapes(root: Path) -> Path:
    from PIL import Image

    rng = np.random.default_rng(1)
    for split, names in CITYSCAPES_FILES.items():
        for name in names:
            city = name.split("_")[0]
            img_dir = root / "leftImg8bit" / split / city
            gt_dir = root / "gtFine" / split / city
            img_dir.mkdir(parents=True, exist_ok=True)
            gt_dir.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).save(img_dir / f"{name}_leftImg8bit.png")
            lab = cityscapes_label() if split != "test" else np.zeros((12, 16), np.uint8)
            Image.fromarray(lab).save(gt_dir / f"{name}_gtFine_labelIds.png")
            # the other files of the release, which the converter must leave alone
            Image.fromarray(np.zeros((12, 16, 4), np.uint8)).save(gt_dir / f"{name}_gtFine_color.png")
            Image.fromarray(np.zeros((12, 16), np.uint16)).save(gt_dir / f"{name}_gtFine_instanceIds.png")
            (gt_dir / f"{name}_gtFine_polygons.json").write_text('{"imgHeight": 12, "imgWidth": 16, "objects": []}')
    return root


CAMVID_FILES = {
    "train": ["0001TP_006690", "0001TP_006720", "0006R0_f00930", "0006R0_f00960", "Seq05VD_f00000"],
    "val": ["0016E5_07959", "0016E5_07961"],
    "test": ["0001TP_008550", "Seq05VD_f02370"],
}


def camvid_label(h: int = 6, w: int = 8) -> np.ndarray:
    lab = np.full(h * w, 3, dtype=np.uint8)
    lab[:12] = np.arange(12)
    return lab.reshape(h, w)


def make_camvid(root: Path) -> Path:
    from PIL import Image

    rng = np.random.default_rng(2)
    base = root / "CamVid"
    for split, names in CAMVID_FILES.items():
        (base / split).mkdir(parents=True)
        (base / f"{split}annot").mkdir()
        for name in names:
            Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).save(base / split / f"{name}.png")
            Image.fromarray(camvid_label()).save(base / f"{split}annot" / f"{name}.png")
        (base / f"{split}.txt").write_text("\n".join(f"/SegNet/CamVid/{split}/{n}.png /SegNet/CamVid/{split}annot/"
                                                     f"{n}.png" for n in names))
    return root


PROSTATE_SPACING = (0.6, 0.6, 4.0)


def make_msd_prostate(root: Path, n_train: int = 5, n_test: int = 2) -> Path:
    """``Task05_Prostate``: 4D (x, y, z, 2 modalities) images, MSD dataset.json, ``._`` junk files."""
    import SimpleITK as sitk

    task = root / "Task05_Prostate"
    names = [f"prostate_{i:02d}" for i in range(n_train)]
    tests = [f"prostate_{i:02d}" for i in range(30, 30 + n_test)]
    rng = np.random.default_rng(3)
    for folder, cases in (("imagesTr", names), ("imagesTs", tests)):
        (task / folder).mkdir(parents=True)
        for n in cases:
            arr = rng.normal(size=(2, 3, 5, 4)).astype(np.float32)  # (channel, z, y, x)
            arr[1] += 10  # ADC differs from T2, so a swapped channel shows
            img = sitk.JoinSeries([sitk.GetImageFromArray(arr[c]) for c in range(2)])
            img.SetSpacing(PROSTATE_SPACING + (1.0,))
            img.SetOrigin((1.0, 2.0, 3.0, 0.0))
            sitk.WriteImage(img, str(task / folder / f"{n}.nii.gz"))
            (task / folder / f"._{n}.nii.gz").write_bytes(b"\x00\x05\x16\x07 mac resource fork")
    (task / "labelsTr").mkdir()
    for n in names:
        lab = np.zeros((3, 5, 4), np.uint8)
        lab[1, 1:3, 1:3] = 1
        lab[2, 3, 2] = 2
        _sitk_write(lab, task / "labelsTr" / f"{n}.nii.gz", PROSTATE_SPACING, (1.0, 2.0, 3.0))
    (task / "dataset.json").write_text(json.dumps({
        "name": "PROSTATE", "description": "Prostate transitional zone and peripheral zone segmentation",
        "tensorImageSize": "4D", "modality": {"0": "T2", "1": "ADC"},
        "labels": {"0": "background", "1": "PZ", "2": "TZ"}, "numTraining": n_train, "numTest": n_test,
        "training": [{"image": f"./imagesTr/{n}.nii.gz", "label": f"./labelsTr/{n}.nii.gz"} for n in names],
        "test": [f"./imagesTs/{n}.nii.gz" for n in tests],
    }, indent=1))
    return task


def nnunet_env(tmp: Path) -> dict:
    env = dict(os.environ)
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        env[key] = str(tmp / key)
        (tmp / key).mkdir(parents=True, exist_ok=True)
    return env


def verify_with_nnunet(folders: list[Path], tmp: Path) -> str:
    """nnU-Net's own integrity check, in a subprocess (nnU-Net reads its paths at import time)."""
    code = ("import sys\nfrom nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity\n"
            "for f in sys.argv[1:]:\n    verify_dataset_integrity(f, 1)\n")
    proc = subprocess.run([sys.executable, "-c", code, *map(str, folders)], env=nnunet_env(tmp),
                          capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    # nnU-Net reports geometry disagreements as warnings without failing: treat them as failures
    bad = [line for line in out.splitlines() if line.startswith(("Error", "Warning", "WARNING"))]
    assert not bad, out[-3000:]
    assert out.count("verify_dataset_integrity Done") == len(folders), out[-3000:]
    return out


def read_png(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im)


def read_nii(path: Path):
    import SimpleITK as sitk

    img = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(img), img
