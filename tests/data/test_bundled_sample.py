"""The bundled Hippocampus sample and its import into an nnU-Net raw dataset."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from autoseg.data.bundled import SAMPLES_DIR, DatasetError, import_bundled, resolve_dataset

SAMPLE = SAMPLES_DIR / "hippocampus"
SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"


def test_sample_is_a_verbatim_subset_with_licence():
    images = sorted((SAMPLE / "images").glob("*.nii.gz"))
    assert 40 <= len(images) <= 60
    assert sorted(p.name for p in (SAMPLE / "labels").glob("*.nii.gz")) == [p.name for p in images]
    assert "CC BY-SA 4.0" in (SAMPLE / "LICENSE").read_text()
    assert "Simpson" in (SAMPLE / "README.md").read_text()
    manifest = SHARED / "MANIFEST.sha256"
    if not manifest.is_file():
        pytest.skip("../shared/data is not present to compare checksums against")
    sums = dict(reversed(line.split()) for line in manifest.read_text().splitlines() if line.strip())
    for p in images[:10]:
        key = f"msd_hippocampus/data/TrainingSet/images/{p.name}"
        assert hashlib.sha256(p.read_bytes()).hexdigest() == sums[key]


def test_import_writes_nnunet_raw_dataset(tmp_path):
    ds = import_bundled("hippocampus", tmp_path, limit=6, progress=None)
    assert ds.name == "Dataset991_AutosegHippocampus6" and ds.dataset_id == 991
    dj = json.loads((ds.raw_dir / "dataset.json").read_text())
    assert dj["labels"] == {"background": 0, "anterior": 1, "posterior": 2}
    assert dj["numTraining"] == 6 and dj["file_ending"] == ".nii.gz" and dj["channel_names"] == {"0": "MRI"}
    cases = sorted(p.name for p in (ds.raw_dir / "labelsTr").iterdir())
    assert len(cases) == 6
    for case in cases:
        img = ds.raw_dir / "imagesTr" / case.replace(".nii.gz", "_0000.nii.gz")
        assert img.read_bytes() == (SAMPLE / "images" / case).read_bytes()
        lab = sitk.ReadImage(str(ds.raw_dir / "labelsTr" / case))
        assert lab.GetPixelID() == sitk.sitkUInt8
        src = sitk.ReadImage(str(SAMPLE / "labels" / case))
        np.testing.assert_array_equal(sitk.GetArrayFromImage(lab), sitk.GetArrayFromImage(src).astype(np.uint8))
        assert lab.GetSpacing() == src.GetSpacing() and lab.GetOrigin() == src.GetOrigin()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_float_labels_are_cast():
    float_cases = [p for p in (SAMPLE / "labels").glob("*.nii.gz")
                   if sitk.ReadImage(str(p)).GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64)]
    for p in float_cases:
        arr = sitk.GetArrayFromImage(sitk.ReadImage(str(p)))
        assert set(np.unique(arr)) <= {0.0, 1.0, 2.0}, p.name  # casting loses nothing


def test_reimport_is_reused_and_foreign_folder_refused(tmp_path):
    a = import_bundled("hippocampus", tmp_path, limit=5, progress=None)
    stamp = (a.raw_dir / "dataset.json").stat().st_mtime_ns
    b = resolve_dataset("hippocampus", tmp_path, limit=5, progress=None)
    assert b == a and (a.raw_dir / "dataset.json").stat().st_mtime_ns == stamp
    other = tmp_path / "Dataset991_SomethingElse"
    other.mkdir()
    with pytest.raises(DatasetError, match="id 991 is taken"):
        import_bundled("hippocampus", tmp_path, limit=5, progress=None)


def test_unknown_bundled_name(tmp_path):
    with pytest.raises(DatasetError, match="dataset 'nope' not found"):
        resolve_dataset("nope", tmp_path)
