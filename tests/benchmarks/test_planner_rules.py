"""benchmarks/planner_rules.py: the thick-slice stand-in it makes and the table it prints (the runs need a quiet machine)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("planner_rules")


def test_thick_slices_average_the_image_and_keep_the_middle_label(bench, tmp_path):
    import SimpleITK as sitk

    src = tmp_path / "Dataset001_Src"
    (src / "imagesTr").mkdir(parents=True)
    (src / "labelsTr").mkdir()
    rng = np.random.default_rng(0)
    image = rng.normal(size=(12, 4, 3)).astype(np.float32)  # [z, y, x]: 12 slices of 4 x 3
    label = rng.integers(0, 3, size=(12, 4, 3)).astype(np.uint8)
    for arr, path in ((image, src / "imagesTr" / "c1_0000.nii.gz"), (label, src / "labelsTr" / "c1.nii.gz")):
        img = sitk.GetImageFromArray(arr)
        img.SetSpacing((0.5, 0.8, 1.2))
        img.SetOrigin((10.0, 20.0, 30.0))
        sitk.WriteImage(img, str(path))
    (src / "dataset.json").write_text(json.dumps({"channel_names": {"0": "MRI"}, "labels": {"background": 0, "a": 1,
                                                  "b": 2}, "numTraining": 1, "file_ending": ".nii.gz"}))
    dst = bench.make_thick_slices(src, tmp_path / "Dataset992_Thick", factor=5)
    out_img = sitk.ReadImage(str(dst / "imagesTr" / "c1_0000.nii.gz"))
    out_lab = sitk.ReadImage(str(dst / "labelsTr" / "c1.nii.gz"))
    # 12 slices -> 2 thick ones (the last 2 dropped): slices 0-4 and 5-9 averaged, labels of slices 2 and 7
    expected = np.stack([image[0:5].mean(0), image[5:10].mean(0)])
    np.testing.assert_allclose(sitk.GetArrayFromImage(out_img), expected, rtol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(out_lab), label[[2, 7]])
    assert out_img.GetSpacing() == pytest.approx((0.5, 0.8, 6.0))
    # the first thick slice is centred on the old slices 0..4: 2 slices of 1.2 mm further along z
    assert out_img.GetOrigin() == pytest.approx((10.0, 20.0, 32.4))
    dj = json.loads((dst / "dataset.json").read_text())
    assert dj["labels"] == {"background": 0, "a": 1, "b": 2} and "thickened 5x" in dj["description"]
    assert bench.make_thick_slices(src, dst) == dst  # done before: left as it is


def test_table_lists_runs_in_order_with_failures(bench):
    results = {
        "camvid:600:500": {"dataset": "camvid", "budget_s": 600, "min_iterations": 500, "wall_s": 700.0,
                           "score": 0.2, "metric": "mIoU", "patch_size": [192, 256], "batch_size": 10,
                           "features": [16, 32], "epochs": 50, "iterations_per_epoch": 12},
        "hippocampus:600:2000": {"dataset": "hippocampus", "budget_s": 600, "min_iterations": 2000, "wall_s": 30.0,
                                 "error": "PlanError: nothing fits the budget"},
    }
    lines = bench.table(results).splitlines()
    assert lines[2].startswith("| hippocampus | 10 min | 2000 | failed: PlanError")
    assert lines[3] == "| camvid | 10 min | 500 | 192x256, 10, 16..32 (2 stages) | 600 | 700 s | 0.200 (mIoU) |"
