"""Generic folder converter, and every validation rule triggered by one broken source at once."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _convert_fixtures import _sitk_write, read_nii, read_png, verify_with_nnunet
from PIL import Image

from autoseg.data.convert import ConversionError, convert

SPACING = (0.5, 0.5, 2.0)
ORIGIN = (10.0, -5.0, 3.0)


def _volume_pair(root, case, *, image=None, label=None, image_kw=None, label_kw=None, channels=1):
    rng = np.random.default_rng(abs(hash(case)) % 2**32)
    for c in range(channels):
        img = image if image is not None else rng.normal(size=(3, 4, 5)).astype(np.float32)
        suffix = f"_{c:04d}" if channels > 1 else ""
        _sitk_write(img, root / "images" / f"{case}{suffix}.nii.gz", **{"spacing": SPACING, "origin": ORIGIN,
                                                                       **(image_kw or {})})
    if label is None:
        label = np.zeros((3, 4, 5), np.uint8)
        label[1, 1:3, 1:3] = 1
        label[2, 0, 0] = 2
    _sitk_write(label, root / "labels" / f"{case}.nii.gz", **{"spacing": SPACING, "origin": ORIGIN,
                                                              **(label_kw or {})})


def test_volumes_with_label_names_and_two_channels(tmp_path):
    src = tmp_path / "src"
    for i in range(4):
        _volume_pair(src, f"liver_{i:03d}", channels=2)
    (src / "names.txt").write_text("# value name\n0 background\n1 liver\n2 tumour\n")
    result = convert("folder", src, tmp_path / "raw", label_names=src / "names.txt", channel_names="CT,PET",
                     name="LiverPET")
    dj = json.loads((result.path / "dataset.json").read_text())
    assert result.path.name == "Dataset605_LiverPET"
    assert dj["labels"] == {"background": 0, "liver": 1, "tumour": 2}
    assert dj["channel_names"] == {"0": "CT", "1": "PET"}
    assert dj["file_ending"] == ".nii.gz"
    arr, img = read_nii(result.path / "imagesTr" / "liver_002_0001.nii.gz")
    src_arr, _ = read_nii(src / "images" / "liver_002_0001.nii.gz")
    np.testing.assert_array_equal(arr, src_arr)
    np.testing.assert_allclose(img.GetSpacing(), SPACING)
    verify_with_nnunet([result.path], tmp_path)


def test_png_labels_with_255_ignore_are_renumbered(tmp_path):
    src = tmp_path / "src"
    (src / "images").mkdir(parents=True)
    (src / "labels").mkdir()
    lab = np.zeros((6, 8), np.uint8)
    lab[:2] = 1
    lab[5] = 255
    for i in range(3):
        Image.fromarray(np.full((6, 8, 3), 40 * i, np.uint8)).save(src / "images" / f"road_{i}.png")
        Image.fromarray(lab).save(src / "labels" / f"road_{i}.png")
    (src / "labels.json").write_text(json.dumps({"0": "road", "1": "car", "255": "ignore"}))
    result = convert("folder", src, tmp_path / "raw", label_names=src / "labels.json", natural_image=True)
    dj = json.loads((result.path / "dataset.json").read_text())
    assert dj["labels"] == {"background": 0, "car": 1, "ignore": 2}
    assert dj["autoseg"]["class_names"] == {"0": "road", "1": "car"}
    assert dj["autoseg"]["evaluated_classes"] == [0, 1] and dj["autoseg"]["natural_image"] is True
    assert dj["autoseg"]["label_mapping"] == {"0": 0, "1": 1, "255": 2}
    assert dj["channel_names"] == {"0": "R", "1": "G", "2": "B"} and dj["file_ending"] == ".png"
    out = read_png(result.path / "labelsTr" / "road_1.png")
    expected = lab.copy()
    expected[5] = 2
    np.testing.assert_array_equal(out, expected)
    verify_with_nnunet([result.path], tmp_path)


def test_labels_taken_from_the_data_without_a_name_file(tmp_path):
    import tifffile

    src = tmp_path / "src"
    (src / "images").mkdir(parents=True)
    (src / "labels").mkdir()
    for i in range(2):
        tifffile.imwrite(src / "images" / f"cell_{i}.tif", np.random.default_rng(i).random((6, 8), np.float32))
        lab = np.zeros((6, 8), np.uint8)
        lab[1:3, 1:3] = 4
        tifffile.imwrite(src / "labels" / f"cell_{i}.tif", lab)
    result = convert("folder", src, tmp_path / "raw")
    dj = json.loads((result.path / "dataset.json").read_text())
    assert dj["labels"] == {"background": 0, "label_4": 1}
    assert dj["file_ending"] == ".tif"  # float images do not fit PNG
    assert any("renumbered" in w for w in result.warnings)


def test_rgb_and_grey_images_mixed_are_refused(tmp_path):
    src = tmp_path / "src"
    (src / "images").mkdir(parents=True)
    (src / "labels").mkdir()
    for i in range(3):
        shape = (6, 8) if i == 2 else (6, 8, 3)
        Image.fromarray(np.zeros(shape, np.uint8)).save(src / "images" / f"street_{i}.png")
        Image.fromarray(np.ones((6, 8), np.uint8)).save(src / "labels" / f"street_{i}.png")
    with pytest.raises(ConversionError) as e:
        convert("folder", src, tmp_path / "raw")
    assert {(p.case, p.kind) for p in e.value.problems} == {("street_2", "channels")}
    assert not (tmp_path / "raw").exists()


# --- every validation rule of issue 5, each on its own case, all reported by one call ---

EXPECTED_PROBLEMS = {
    ("img_only", "missing partner"),
    ("label_only", "missing partner"),
    ("bad_shape", "shape"),
    ("bad_spacing", "spacing"),
    ("bad_origin", "origin"),
    ("bad_direction", "direction"),
    ("bad_values", "label values"),
    ("float_label", "label values"),
    ("has_nan", "intensity"),
    ("has_inf", "intensity"),
    ("empty", "empty label"),
    ("unreadable", "unreadable"),
    ("dup", "duplicate"),
}


@pytest.fixture
def broken(tmp_path):
    src = tmp_path / "src"
    for good in ("good_1", "good_2"):
        _volume_pair(src, good)
    _volume_pair(src, "img_only")
    (src / "labels" / "img_only.nii.gz").unlink()
    _volume_pair(src, "label_only")
    (src / "images" / "label_only.nii.gz").unlink()
    _volume_pair(src, "bad_shape", label=np.ones((3, 4, 6), np.uint8))
    _volume_pair(src, "bad_spacing", label_kw={"spacing": (0.5, 0.5, 2.5)})
    _volume_pair(src, "bad_origin", label_kw={"origin": (10.0, -5.0, 13.0)})
    _volume_pair(src, "bad_direction", label_kw={"direction": (-1, 0, 0, 0, 1, 0, 0, 0, 1)})
    bad = np.zeros((3, 4, 5), np.uint8)
    bad[0, 0, 0], bad[1, 1, 1] = 1, 7
    _volume_pair(src, "bad_values", label=bad)
    _volume_pair(src, "float_label", label=np.full((3, 4, 5), 0.5, np.float32))
    nan = np.zeros((3, 4, 5), np.float32)
    nan[0, 0, 0] = np.nan
    _volume_pair(src, "has_nan", image=nan)
    inf = np.zeros((3, 4, 5), np.float32)
    inf[0, 0, 0] = np.inf
    _volume_pair(src, "has_inf", image=inf)
    _volume_pair(src, "empty", label=np.zeros((3, 4, 5), np.uint8))
    _volume_pair(src, "unreadable")
    (src / "images" / "unreadable.nii.gz").write_bytes(b"\x1f\x8b garbage, not a NIfTI file")
    _volume_pair(src, "dup")
    _sitk_write(np.zeros((3, 4, 5), np.float32), src / "images" / "dup.nrrd", SPACING, ORIGIN)
    (src / "names.txt").write_text("0 background\n1 organ\n2 lesion\n")
    return src


def test_every_problem_reported_at_once_naming_its_case(broken, tmp_path):
    raw = tmp_path / "raw"
    with pytest.raises(ConversionError) as e:
        convert("folder", broken, raw, label_names=broken / "names.txt")
    found = {(p.case, p.kind) for p in e.value.problems}
    assert found == EXPECTED_PROBLEMS
    text = str(e.value)
    for case, kind in EXPECTED_PROBLEMS:
        assert f"\n  {case}: {kind}: " in text
    assert "bad_values: label values: bad_values.nii.gz holds [7], outside the declared set [0, 1, 2]" in text
    assert "has_nan: intensity: has_nan.nii.gz has 1 NaN and 0 infinite value(s)" in text
    assert "bad_spacing: spacing: label bad_spacing.nii.gz has spacing (0.5, 0.5, 2.5)" in text
    # nothing written, not even a temporary folder
    assert not raw.exists() or list(raw.iterdir()) == []


def test_empty_labels_can_be_allowed(tmp_path):
    src = tmp_path / "src"
    _volume_pair(src, "good_1")
    _volume_pair(src, "good_2")
    _volume_pair(src, "empty", label=np.zeros((3, 4, 5), np.uint8))
    (src / "names.txt").write_text("0 background\n1 organ\n2 lesion\n")
    with pytest.raises(ConversionError):
        convert("folder", src, tmp_path / "raw", label_names=src / "names.txt")
    result = convert("folder", src, tmp_path / "raw", label_names=src / "names.txt", allow_empty=True)
    assert any(w.startswith("empty: empty label") for w in result.warnings)
    assert (result.path / "labelsTr" / "empty.nii.gz").is_file()
