"""MSD converter: 4D multi-modal images split into channels; the plain Hippocampus layout on real data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from _convert_fixtures import PROSTATE_SPACING, make_msd_prostate, read_nii, verify_with_nnunet

from autoseg.data.convert import ConversionError, convert

REAL = Path("/work/shared/data/msd_hippocampus/data/TrainingSet")


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("msd")
    return convert("msd", make_msd_prostate(tmp), tmp / "raw"), tmp


def test_4d_images_become_one_file_per_channel(converted):
    import SimpleITK as sitk

    result, tmp = converted
    src = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp / "Task05_Prostate" / "imagesTr" / "prostate_03.nii.gz")))
    assert src.shape == (2, 3, 5, 4)
    for c, expected in enumerate(src):
        arr, img = read_nii(result.path / "imagesTr" / f"prostate_03_{c:04d}.nii.gz")
        np.testing.assert_array_equal(arr, expected)
        assert img.GetDimension() == 3
        np.testing.assert_allclose(img.GetSpacing(), PROSTATE_SPACING)
        np.testing.assert_allclose(img.GetOrigin(), (1.0, 2.0, 3.0))
    dj = json.loads((result.path / "dataset.json").read_text())
    assert dj["channel_names"] == {"0": "T2", "1": "ADC"}
    assert dj["labels"] == {"background": 0, "PZ": 1, "TZ": 2}
    assert result.path.name == "Dataset615_Prostate"


def test_test_images_and_junk_files(converted):
    result, _ = converted
    assert sorted(p.name for p in (result.path / "imagesTs").iterdir()) == [
        "prostate_30_0000.nii.gz", "prostate_30_0001.nii.gz", "prostate_31_0000.nii.gz", "prostate_31_0001.nii.gz"]
    assert not (result.path / "labelsTs").exists()  # MSD test labels are not public
    assert sorted(p.name for p in (result.path / "labelsTr").iterdir()) == [f"prostate_{i:02d}.nii.gz"
                                                                            for i in range(5)]


def test_nnunet_accepts_it(converted, tmp_path):
    verify_with_nnunet([converted[0].path], tmp_path)


def test_problems_name_the_cases(tmp_path):
    import SimpleITK as sitk

    task = make_msd_prostate(tmp_path)
    (task / "labelsTr" / "prostate_01.nii.gz").unlink()
    one = sitk.GetImageFromArray(np.zeros((3, 5, 4), np.float32))  # one modality instead of two
    one.SetSpacing(PROSTATE_SPACING)
    one.SetOrigin((1.0, 2.0, 3.0))
    sitk.WriteImage(one, str(task / "imagesTr" / "prostate_02.nii.gz"))
    lab = sitk.ReadImage(str(task / "labelsTr" / "prostate_03.nii.gz"))
    lab.SetSpacing((0.6, 0.6, 3.0))
    sitk.WriteImage(lab, str(task / "labelsTr" / "prostate_03.nii.gz"))
    with pytest.raises(ConversionError) as e:
        convert("msd", task, tmp_path / "raw")
    found = {(p.case, p.kind) for p in e.value.problems}
    assert found == {("prostate_01", "missing partner"), ("prostate_02", "channels"), ("prostate_03", "spacing")}
    assert "prostate_03: spacing: label prostate_03.nii.gz has spacing (0.6, 0.6, 3)" in str(e.value)


@pytest.mark.slow
@pytest.mark.skipif(not REAL.is_dir(), reason=f"{REAL} (real MSD Hippocampus) not present")
def test_real_hippocampus_subset(tmp_path):
    result = convert("msd", REAL, tmp_path / "raw", limit=5)
    dj = json.loads((result.path / "dataset.json").read_text())
    assert result.path.name == "Dataset614_Hippocampus"
    assert dj["labels"] == {"background": 0, "Anterior": 1, "Posterior": 2}
    names = sorted(p.name for p in (REAL / "labels").glob("*.nii.gz"))[:5]
    for name in names:
        src, _ = read_nii(REAL / "labels" / name)
        out, _ = read_nii(result.path / "labelsTr" / name)
        np.testing.assert_array_equal(out, src.astype(np.uint8))
        assert out.dtype == np.uint8  # some source labels are float32
    verify_with_nnunet([result.path], tmp_path)
