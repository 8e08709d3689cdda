"""CamVid converter: SegNet layout, 11 classes + void as ignore; the real data in /work/shared/data."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _convert_fixtures import CAMVID_FILES, camvid_label, make_camvid, nnunet_env, read_png, verify_with_nnunet
from PIL import Image

from autoseg.data.convert import ConversionError, convert

REAL = Path("/work/shared/data/camvid")
# /work/shared/data/README.md: the SegNet classes, 11 = void
NAMES = ["sky", "building", "pole", "road", "pavement", "tree", "sign_symbol", "fence", "car", "pedestrian",
         "bicyclist"]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("camvid")
    return convert("camvid", make_camvid(tmp / "camvid"), tmp / "raw"), tmp


def test_classes_and_void(converted):
    result, _ = converted
    dj = json.loads((result.path / "dataset.json").read_text())
    assert result.path.name == "Dataset603_CamVid"
    assert [dj["autoseg"]["class_names"][str(i)] for i in range(11)] == NAMES
    assert dj["labels"]["ignore"] == 11 and max(dj["labels"].values()) == 11
    assert dj["autoseg"]["evaluated_classes"] == list(range(11))  # sky (0) is a class, not background
    assert dj["autoseg"]["natural_image"] is True
    np.testing.assert_array_equal(read_png(result.path / "labelsTr" / "0006R0_f00930.png"), camvid_label())


def test_split_train_val_for_training_test_as_test(converted):
    result, _ = converted
    train = sorted(CAMVID_FILES["train"] + CAMVID_FILES["val"])
    assert sorted(p.stem for p in (result.path / "labelsTr").iterdir()) == train
    assert sorted(p.stem for p in (result.path / "labelsTs").iterdir()) == sorted(CAMVID_FILES["test"])
    folds = json.loads((result.path / "autoseg_splits.json").read_text())
    assert len(folds) == 6
    assert sorted(c for f in folds[:5] for c in f["val"]) == train
    assert folds[5] == {"train": sorted(CAMVID_FILES["train"]), "val": sorted(CAMVID_FILES["val"])}


def test_nnunet_accepts_it(converted, tmp_path):
    verify_with_nnunet([converted[0].path], tmp_path)


def test_problems_name_the_cases(tmp_path):
    src = make_camvid(tmp_path / "camvid")
    base = src / "CamVid"
    (base / "valannot" / "0016E5_07961.png").unlink()
    Image.fromarray(np.full((6, 8), 12, np.uint8)).save(base / "trainannot" / "0001TP_006720.png")
    Image.fromarray(np.full((6, 8), 11, np.uint8)).save(base / "testannot" / "Seq05VD_f02370.png")  # all void
    (base / "train" / "Seq05VD_f00000.png").write_bytes(b"not a png")
    Image.fromarray(np.zeros((6, 8), np.uint8)).save(base / "train" / "0006R0_f00960.png")  # grey, not RGB
    for sub in ("test", "testannot"):  # the same frame in two splits
        (base / sub / "0001TP_006690.png").write_bytes((base / sub.replace("test", "train") / "0001TP_006690.png")
                                                       .read_bytes())
    with pytest.raises(ConversionError) as e:
        convert("camvid", src, tmp_path / "raw")
    found = {(p.case, p.kind) for p in e.value.problems}
    assert found == {("0016E5_07961", "missing partner"), ("0001TP_006720", "label values"),
                     ("Seq05VD_f02370", "empty label"), ("Seq05VD_f00000", "unreadable"),
                     ("0006R0_f00960", "channels"), ("0001TP_006690", "duplicate")}


needs_real = pytest.mark.skipif(not (REAL / "CamVid").is_dir(), reason=f"{REAL} (real CamVid) not present")


@pytest.mark.slow
@needs_real
def test_real_camvid_subset_plans_in_nnunet(tmp_path):
    """The real SegNet files: labels unchanged, nnU-Net's integrity check and 2d planning pass."""
    result = convert("camvid", REAL, tmp_path / "nnUNet_raw", limit=3)
    assert (result.n_train, result.n_test) == (6, 3)
    name = sorted(p.name for p in (REAL / "CamVid" / "train").glob("*.png"))[0]
    np.testing.assert_array_equal(read_png(result.path / "labelsTr" / name),
                                  read_png(REAL / "CamVid" / "trainannot" / name))
    np.testing.assert_array_equal(read_png(result.path / "imagesTr" / name.replace(".png", "_0000.png")),
                                  read_png(REAL / "CamVid" / "train" / name))
    env = nnunet_env(tmp_path)
    bindir = Path(sys.executable).parent
    proc = subprocess.run([str(bindir / "nnUNetv2_plan_and_preprocess"), "-d", "603", "--verify_dataset_integrity",
                           "-c", "2d", "-np", "1", "-npfp", "1"], env=env, capture_output=True, text=True,
                          timeout=400)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    pre = tmp_path / "nnUNet_preprocessed" / "Dataset603_CamVid"
    plans = json.loads((pre / "nnUNetPlans.json").read_text())
    assert "2d" in plans["configurations"]
    fp = json.loads((pre / "dataset_fingerprint.json").read_text())
    assert len(fp["shapes_after_crop"]) == 6
    from autoseg.data.convert import install_splits

    splits = install_splits(result.path, pre)
    assert json.loads(splits.read_text()) == json.loads((result.path / "autoseg_splits.json").read_text())
