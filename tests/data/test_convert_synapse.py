"""Synapse converter: both releases, the 8-organ mapping, the 18/12 split and the frozen folds."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _convert_fixtures import (
    SYNAPSE_ORIGIN,
    SYNAPSE_SPACING,
    SYNAPSE_TEST,
    SYNAPSE_TRAIN,
    make_synapse_raw,
    make_synapse_transunet,
    read_nii,
    synapse_label_volume,
    transunet_image_slice,
    transunet_label_slice,
    verify_with_nnunet,
)

from autoseg.data.convert import ConversionError, convert

# PROTOCOL.md: original id -> organ; the five organs not evaluated become background.
ORIGINAL = {1: "spleen", 2: "kidney_right", 3: "kidney_left", 4: "gallbladder", 6: "liver", 7: "stomach",
            8: "aorta", 11: "pancreas"}
NOT_EVALUATED = [5, 9, 10, 12, 13]


@pytest.fixture(scope="module")
def raw_result(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("synapse_raw")
    src = make_synapse_raw(tmp / "Abdomen")
    return convert("synapse", src, tmp / "raw"), tmp


@pytest.fixture(scope="module")
def transunet_result(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("synapse_tu")
    src = make_synapse_transunet(tmp / "Synapse", n_slices=12)  # > 10: slice010 must follow slice009
    return convert("synapse", src, tmp / "raw"), tmp


def test_raw_release_maps_13_organs_to_the_8_evaluated(raw_result):
    result, _ = raw_result
    dj = json.loads((result.path / "dataset.json").read_text())
    assert result.path.name == "Dataset601_Synapse"
    labels = dj["labels"]
    assert sorted(labels.values()) == list(range(9)) and labels["background"] == 0
    out, _ = read_nii(result.path / "labelsTr" / "case0005.nii.gz")
    src = synapse_label_volume()
    flat_out, flat_src = out.reshape(-1), src.reshape(-1)
    for original, organ in ORIGINAL.items():
        voxel = int(np.flatnonzero(flat_src == original)[0])
        assert flat_out[voxel] == labels[organ], organ
    for original in NOT_EVALUATED:
        voxel = int(np.flatnonzero(flat_src == original)[0])
        assert flat_out[voxel] == 0, original
    assert dj["autoseg"]["evaluated_classes"] == list(range(1, 9))
    assert dj["autoseg"]["natural_image"] is False


def test_raw_release_keeps_geometry_and_intensities(raw_result, tmp_path):
    result, tmp = raw_result
    src_arr, src_img = read_nii(tmp / "Abdomen" / "RawData" / "Training" / "img" / "img0038.nii.gz")
    arr, img = read_nii(result.path / "imagesTs" / "case0038_0000.nii.gz")
    np.testing.assert_array_equal(arr, src_arr)
    np.testing.assert_allclose(img.GetSpacing(), SYNAPSE_SPACING)
    np.testing.assert_allclose(img.GetOrigin(), SYNAPSE_ORIGIN)
    _, lab = read_nii(result.path / "labelsTs" / "case0038.nii.gz")
    np.testing.assert_allclose(lab.GetSpacing(), SYNAPSE_SPACING)
    assert json.loads((result.path / "dataset.json").read_text())["channel_names"] == {"0": "CT"}


def _cases(folder, ending=".nii.gz"):
    return sorted(p.name[: -len(ending)] for p in folder.iterdir())


@pytest.mark.parametrize("which", ["raw", "transunet"])
def test_protocol_split_18_train_12_test(which, raw_result, transunet_result):
    result, _ = raw_result if which == "raw" else transunet_result
    train = sorted(f"case{n}" for n in SYNAPSE_TRAIN)
    test = sorted(f"case{n}" for n in SYNAPSE_TEST)
    assert _cases(result.path / "labelsTr") == train
    assert _cases(result.path / "imagesTr") == [f"{c}_0000" for c in train]
    assert _cases(result.path / "imagesTs") == [f"{c}_0000" for c in test]
    assert _cases(result.path / "labelsTs") == test
    dj = json.loads((result.path / "dataset.json").read_text())
    assert dj["numTraining"] == 18
    assert dj["autoseg"]["train_split"] == train and dj["autoseg"]["test_split"] == test
    folds = json.loads((result.path / "autoseg_splits.json").read_text())
    assert len(folds) == 5
    assert sorted(c for f in folds for c in f["val"]) == train  # every training case validated once
    assert all(not set(f["train"]) & set(test) and not set(f["val"]) & set(test) for f in folds)
    assert all(sorted(f["train"] + f["val"]) == train for f in folds)


def test_frozen_folds_equal_nnunets_own(raw_result):
    from nnunetv2.utilities.crossval_split import generate_crossval_split  # sklearn only, no nnU-Net paths

    result, _ = raw_result
    folds = json.loads((result.path / "autoseg_splits.json").read_text())
    expected = generate_crossval_split(sorted(f"case{n}" for n in SYNAPSE_TRAIN), seed=12345, n_splits=5)
    assert folds == [{"train": list(map(str, f["train"])), "val": list(map(str, f["val"]))} for f in expected]


def test_transunet_release_stacks_slices_in_order(transunet_result):
    result, _ = transunet_result
    arr, img = read_nii(result.path / "imagesTr" / "case0021_0000.nii.gz")
    expected = np.stack([transunet_image_slice("0021", z) for z in range(12)])
    np.testing.assert_array_equal(arr, expected)
    lab, _ = read_nii(result.path / "labelsTr" / "case0021.nii.gz")
    np.testing.assert_array_equal(lab, np.stack([transunet_label_slice(z) for z in range(12)]).astype(np.uint8))
    assert lab.dtype == np.uint8
    test_img, _ = read_nii(result.path / "imagesTs" / "case0001_0000.nii.gz")
    np.testing.assert_array_equal(test_img, np.stack([transunet_image_slice("0001", z) for z in range(12)]))
    dj = json.loads((result.path / "dataset.json").read_text())
    # already clipped and scaled to [0, 1]: not nnU-Net's CT normalisation
    assert dj["channel_names"] == {"0": "zscore"}
    assert dj["labels"]["liver"] == 5 and dj["labels"]["pancreas"] == 8
    assert result.warnings == []


def test_transunet_label_order_is_checked_against_organ_sizes(tmp_path):
    src = make_synapse_transunet(tmp_path / "Synapse")
    swapped = {1: "liver", 2: "kidney_right", 3: "kidney_left", 4: "gallbladder", 5: "spleen", 6: "stomach",
               7: "aorta", 8: "pancreas"}
    result = convert("synapse", src, tmp_path / "raw", transunet_labels=swapped)
    assert any("liver" in w and "value 5 covers the most voxels" in w for w in result.warnings), result.warnings


def test_nnunet_accepts_both_releases(raw_result, transunet_result, tmp_path):
    verify_with_nnunet([raw_result[0].path, transunet_result[0].path], tmp_path)


def test_raw_release_problems_name_the_cases(tmp_path):
    src = make_synapse_raw(tmp_path / "Abdomen", skip_label=("0007",))
    bad = synapse_label_volume()
    bad[0, 0, 0] = 14  # no organ 14 in the challenge
    from _convert_fixtures import _sitk_write

    _sitk_write(bad, src / "RawData" / "Training" / "label" / "label0022.nii.gz", SYNAPSE_SPACING, SYNAPSE_ORIGIN)
    (src / "RawData" / "Training" / "img" / "img0009.nii.gz").unlink()
    with pytest.raises(ConversionError) as e:
        convert("synapse", src, tmp_path / "raw")
    found = {(p.case, p.kind) for p in e.value.problems}
    assert found == {("case0007", "missing partner"), ("case0009", "missing partner"), ("case0022", "label values")}
    assert "case0022: label values: label0022.nii.gz holds [14]" in str(e.value)
    assert not (tmp_path / "raw").exists() or not any((tmp_path / "raw").iterdir())


def test_transunet_problems_name_the_cases(tmp_path):
    import h5py

    src = make_synapse_transunet(tmp_path / "Synapse")
    (src / "train_npz" / "case0010_slice001.npz").unlink()  # a hole in the volume
    np.savez(src / "train_npz" / "case0023_slice000.npz", image=np.zeros((8, 8), np.float32))  # no 'label' key
    np.savez(src / "train_npz" / "case0001_slice000.npz", image=np.zeros((8, 8), np.float32),
             label=np.zeros((8, 8), np.float32))  # a test case among the training slices
    with h5py.File(src / "test_vol_h5" / "case0025.npy.h5", "w") as f:
        f["image"] = np.zeros((3, 8, 8), np.float32)  # no 'label' dataset
    with h5py.File(src / "test_vol_h5" / "case0029.npy.h5", "w") as f:
        image = np.zeros((3, 8, 8), np.float32)
        image[1, 2, 2] = np.nan
        f["image"], f["label"] = image, np.stack([transunet_label_slice(z) for z in range(3)])
    with pytest.raises(ConversionError) as e:
        convert("synapse", src, tmp_path / "raw")
    found = {(p.case, p.kind) for p in e.value.problems}
    assert found == {("case0010", "missing partner"), ("case0023", "unreadable"), ("case0001", "split"),
                     ("case0025", "unreadable"), ("case0029", "intensity")}
    text = str(e.value)
    assert "case0010: missing partner: train_npz lacks slice(s) [1]" in text
    assert "case0023: unreadable: case0023_slice000.npz: key(s) ['label'] missing" in text
    assert "case0025: unreadable: case0025.npy.h5: dataset(s) ['label'] missing" in text
    assert "case0029: intensity: case0029.npy.h5 has 1 NaN" in text
