"""Held-out test sets without nnU-Net: finding imagesTs, the --test-set rule, the folds of the ensemble, and the
scores plan_and_train prints (dataset-level IoU with class 0 for natural images, case-mean Dice for medical)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from autoseg import heldout
from autoseg.evaluation.summary import dataset_info, score_pairs
from autoseg.heldout import HeldOutError, decide, ensemble_folds, find_test_set, predict_test_set

NATURAL = {"labels": {"background": 0, "car": 1, "road": 2, "ignore": 3}, "file_ending": ".png",
           "channel_names": {"0": "R", "1": "G", "2": "B"},
           "autoseg": {"natural_image": True, "evaluated_classes": [0, 1, 2],
                       "class_names": {"0": "sky", "1": "car", "2": "road"}}}
MEDICAL = {"labels": {"background": 0, "car": 1, "road": 2, "ignore": 3}, "file_ending": ".png",
           "channel_names": {"0": "image"}}


def _png(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(arr, np.uint8)).save(path)
    return path


def _dataset(root, cases=("a", "b"), labels=True, shape=(4, 6)):
    for c in cases:
        _png(root / "imagesTs" / f"{c}_0000.png", np.zeros((*shape, 3)))
        if labels:
            _png(root / "labelsTs" / f"{c}.png", np.zeros(shape))
    return root


def test_find_test_set_groups_files_as_nnunet_does(tmp_path):
    ts = find_test_set(_dataset(tmp_path / "ds"), NATURAL)  # an RGB image is one file for three channel names
    assert sorted(ts.cases) == ["a", "b"] and ts.labelled
    assert ts.cases["a"] == [tmp_path / "ds" / "imagesTs" / "a_0000.png"]
    assert ts.voxels() == 2 * 4 * 6
    assert find_test_set(tmp_path / "nothing", NATURAL) is None
    _png(tmp_path / "ds" / "imagesTs" / "c_0001.png", np.zeros((4, 6)))  # channel 0 missing
    with pytest.raises(HeldOutError, match="c_0001.png"):
        find_test_set(tmp_path / "ds", NATURAL)


def test_decide_rule(tmp_path, monkeypatch):
    labelled = find_test_set(_dataset(tmp_path / "l"), NATURAL)
    unlabelled = find_test_set(_dataset(tmp_path / "u", labels=False), NATURAL)
    assert not decide("off", labelled, "cuda").predict
    assert not decide("auto", None, "cpu").predict and not decide("on", None, "cpu").predict
    assert decide("on", unlabelled, "cpu").predict
    assert not decide("auto", unlabelled, "cuda").predict  # nothing to score
    assert decide("auto", labelled, "cpu").predict  # 48 voxels
    monkeypatch.setattr(heldout, "AUTO_MAX_VOXELS_CPU", 47)
    d = decide("auto", labelled, "cpu")
    assert not d.predict and "--test-set on" in d.reason
    monkeypatch.setattr(heldout, "AUTO_MAX_VOXELS_CPU", 95)  # 48 voxels, each network one pass
    assert decide("auto", labelled, "cpu", n_models=1).predict
    assert not decide("auto", labelled, "cpu", n_models=2).predict  # an ensemble of two folds: 96
    assert decide("auto", labelled, "cuda").predict  # a GPU predicts whatever the size
    with pytest.raises(HeldOutError, match="auto, on, off"):
        decide("yes", labelled, "cpu")


def test_ensemble_uses_the_trained_cross_validation_folds(tmp_path):
    for fold in (0, 1, 5):
        (tmp_path / f"fold_{fold}").mkdir()
        (tmp_path / f"fold_{fold}" / "checkpoint_final.pth").write_bytes(b"")
    (tmp_path / "fold_2").mkdir()  # still training: only checkpoint_latest
    (tmp_path / "fold_2" / "checkpoint_latest.pth").write_bytes(b"")
    assert ensemble_folds(tmp_path) == [0, 1, 5]
    assert ensemble_folds(tmp_path, n_cv_folds=5) == [0, 1]  # CamVid's fold 5 (SegNet split) is not mixed in
    for fold in (0, 1):
        (tmp_path / f"fold_{fold}" / "checkpoint_final.pth").unlink()
    assert ensemble_folds(tmp_path, n_cv_folds=5) == [5]
    ts = find_test_set(_dataset(tmp_path / "raw"), NATURAL)
    with pytest.raises(HeldOutError, match=r"fold\(s\) \[2\].*no checkpoint_final.pth"):
        predict_test_set(tmp_path, ts, folds=[2])


def _pairs(tmp_path):
    refs = [[[0, 0, 1], [1, 2, 3]], [[2, 2, 2], [0, 0, 0]]]
    preds = [[[0, 1, 1], [1, 2, 0]], [[2, 2, 0], [0, 0, 0]]]
    return [(_png(tmp_path / "p" / f"{i}.png", p), _png(tmp_path / "r" / f"{i}.png", r))
            for i, (p, r) in enumerate(zip(preds, refs))]


def test_natural_scores_are_one_confusion_matrix_with_class_zero(tmp_path):
    s = score_pairs(_pairs(tmp_path), dataset_info(NATURAL))
    # by hand, the ignore pixel (value 3) left out: sky TP 4 FP 1 FN 1, car TP 2 FP 1, road TP 3 FN 1
    assert s.metric == "iou" and s.aggregation == "dataset_confusion_matrix" and s.n_cases == 2
    assert s.per_class == pytest.approx({"sky": 4 / 6, "car": 2 / 3, "road": 3 / 4})
    assert s.mean == pytest.approx((4 / 6 + 2 / 3 + 3 / 4) / 3) and s.left_out == [] and s.absent == []
    assert "over 3 classes" in s.headline


def test_medical_scores_are_case_means_of_foreground_dice(tmp_path):
    s = score_pairs(_pairs(tmp_path), dataset_info(MEDICAL))
    # car: 0.8 in image 0, absent from both in image 1 (left out, as nnU-Net does); road: 1.0 and 0.8
    assert s.metric == "dice" and s.aggregation == "per_case"
    assert s.per_class == pytest.approx({"car": 0.8, "road": 0.9})
    assert s.mean == pytest.approx(0.85) and s.left_out == ["background"]


def test_a_prediction_made_by_other_checkpoints_is_stale(tmp_path):
    import json
    import os

    from autoseg.heldout import staleness

    for fold in (0, 1):
        (tmp_path / f"fold_{fold}").mkdir()
        (tmp_path / f"fold_{fold}" / "checkpoint_final.pth").write_bytes(b"x")
    ens = tmp_path / "test_predictions" / "ensemble"
    ens.mkdir(parents=True)

    def stamp(fold):
        st = (tmp_path / f"fold_{fold}" / "checkpoint_final.pth").stat()
        return f"{st.st_size}:{st.st_mtime_ns}"

    (ens / "autoseg_test.json").write_text(json.dumps({"folds": [0], "checkpoints": {"0": stamp(0)}}))
    assert "folds [0, 1] are trained now" in staleness(ens, tmp_path)  # fold 1 trained after the prediction
    (ens / "autoseg_test.json").write_text(json.dumps({"folds": [0, 1], "checkpoints": {"0": stamp(0), "1": stamp(1)}}))
    assert staleness(ens, tmp_path) == ""
    ckpt = tmp_path / "fold_1" / "checkpoint_final.pth"
    os.utime(ckpt, ns=(ckpt.stat().st_atime_ns, ckpt.stat().st_mtime_ns + 10**9))  # fold 1 retrained
    assert "fold 1's checkpoint_final.pth changed" in staleness(ens, tmp_path)
