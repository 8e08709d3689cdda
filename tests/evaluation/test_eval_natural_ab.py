"""The issue's A-versus-B example through ``autoseg evaluate`` and ``autoseg report``: 30 natural images where the
dataset-level mIoU puts A (96.1 %) far ahead of B (86.1 %), while the per-image mean IoU with "a class absent from
both scores 1" puts B first and Wilcoxon calls B significantly better. The verdict must follow the mIoU."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from eval_synthetic_tree import AB_SPACING, ab_predict_a, ab_predict_b, ab_reference, build_ab_tree
from scipy import stats

N_IMAGES, CLASSES = 30, (0, 1, 2, 3)


def _hand_counts(predict) -> np.ndarray:
    """[image, class, (tp, fp, fn)] counted directly from the arrays."""
    out = np.zeros((N_IMAGES, len(CLASSES), 3))
    for i in range(N_IMAGES):
        ref, pred = ab_reference(i), predict(ab_reference(i), i)
        for k, c in enumerate(CLASSES):
            p, r = pred == c, ref == c
            out[i, k] = (np.sum(p & r), np.sum(p & ~r), np.sum(~p & r))
    return out


def _hand_miou(counts: np.ndarray) -> float:
    tp, fp, fn = counts.sum(axis=0).T
    return float(np.mean(tp / (tp + fp + fn)))


def _per_image_absent_is_one(counts: np.ndarray) -> np.ndarray:
    tp, fp, fn = counts[..., 0], counts[..., 1], counts[..., 2]
    den = tp + fp + fn
    return np.where(den > 0, tp / np.where(den > 0, den, 1), 1.0).mean(axis=1)


@pytest.fixture(scope="module")
def ab(tmp_path_factory):
    root = tmp_path_factory.mktemp("natural_ab")
    tree = build_ab_tree(root)
    return tree, root


def test_the_example_is_the_trap_the_issue_describes():
    a, b = _hand_counts(ab_predict_a), _hand_counts(ab_predict_b)
    assert _hand_miou(a) == pytest.approx(0.961, abs=0.001) and _hand_miou(b) == pytest.approx(0.861, abs=0.001)
    pa, pb = _per_image_absent_is_one(a), _per_image_absent_is_one(b)
    assert pb.mean() > pa.mean()  # the per-image convention the issue rejects puts B first ...
    w = stats.wilcoxon(pa - pb)
    assert w.pvalue < 1e-3 and np.sum(pb > pa) > np.sum(pa > pb)  # ... and "significantly"


def test_evaluate_scores_every_class_of_a_plain_nnunet_natural_dataset(ab, capsys):
    from autoseg.cli.main import main
    from autoseg.evaluation.tables import read_table

    tree, root = ab
    out = root / "evaluation.csv"
    assert main(["evaluate", str(tree["results"]), "--preprocessed", str(tree["preprocessed"]), "--out",
                 str(out)]) == 0
    rows = read_table(out)
    # no autoseg.json: the natural flag and the class names come from dataset.json's autoseg block
    assert {r["natural_image"] for r in rows} == {True}
    assert sorted({(r["label"], r["class_name"]) for r in rows}) == [(0, "sky"), (1, "road"), (2, "car"),
                                                                      (3, "sign")]
    assert len(rows) == 2 * N_IMAGES * 4 and all(np.isnan(r["hd95"]) for r in rows)  # IoU only, as Cityscapes
    assert {r["split"] for r in rows} == {"cv"}
    hand = _hand_counts(ab_predict_a)
    r = next(r for r in rows if r["method"] == "A" and r["case"] == "street_001" and r["label"] == 3)
    assert (r["tp"], r["fp"], r["fn"]) == tuple(hand[1, 3]) == (0, 1, 0)  # the stray sign pixel
    with open(root / "evaluation_long.csv", newline="") as f:
        long = list(csv.DictReader(f))
    assert list(long[0]) == ["task", "case", "algorithm", "value"]
    # per image, a class absent from both has no value: image 1 of B has sky and road only (no car, no sign)
    b1 = [x for x in long if x["algorithm"] == "B" and x["case"] == "street_001" and "IoU" in x["task"]]
    assert sorted(x["task"].rsplit(" ", 1)[1] for x in b1) == ["road", "sky"]


def test_report_ranks_a_first_on_the_dataset_level_miou(ab, capsys):
    from autoseg.cli.main import main

    tree, root = ab
    out = root / "report"
    capsys.readouterr()
    assert main(["report", str(tree["results"]), "--preprocessed", str(tree["preprocessed"]), "--out", str(out),
                 "--bootstrap", "300", "--baseline", "B", "--json"]) == 0
    verdict = json.loads(capsys.readouterr().out)  # stdout holds the JSON only; progress went to stderr
    (g,) = verdict["groups"]
    assert g["natural_image"] and "mIoU" in g["statistic"] and "dataset-level" in g["statistic"]
    first, second = g["ranking"]
    assert (first["loss"], second["loss"]) == ("A", "B") and (first["rank"], second["rank"]) == (1.0, 2.0)
    assert first["value"] == pytest.approx(_hand_miou(_hand_counts(ab_predict_a)), abs=1e-9)
    assert second["value"] == pytest.approx(_hand_miou(_hand_counts(ab_predict_b)), abs=1e-9)
    assert first["ci_low"] > second["ci_high"]  # bootstrap intervals over images do not overlap
    assert first["rank_interval"] == [1.0, 1.0] and second["rank_interval"] == [2.0, 2.0]

    tables = out / "tables"

    def table(prefix):
        with open(next(tables.glob(f"{prefix}_*.csv")), newline="") as f:
            return list(csv.DictReader(f))

    iou = table("iou")
    assert [r["loss"] for r in iou] == ["A", "B"] and iou[0]["IoU sky (%)"] == "99.89"
    sig = {r["loss"]: r for r in table("significance")}
    assert sig["A"]["B"].endswith("<")  # the permutation test of the mIoU: A significantly better
    (diff,) = table("vs_baseline")
    assert diff["loss"] == "A" and float(diff["Δ mIoU vs B (points)"]) == pytest.approx(
        100 * (_hand_miou(_hand_counts(ab_predict_a)) - _hand_miou(_hand_counts(ab_predict_b))), abs=0.01)
    low, high = (float(x) for x in diff["95% CI"].strip("[]").split(", "))
    assert 0 < low < high and float(diff["permutation p (Holm)"]) < 0.01
    ranking = {r["loss"]: r for r in table("ranking")}
    assert ranking["A"]["headline (mIoU)"] == "1" and ranking["A"]["test-based (paired permutation test of the "
                                                                   "dataset-level mIoU over images, Holm)"] == "1"
    md = (out / "report.md").read_text()
    assert "Every class of the dataset is evaluated (4: sky, road, car, sign)" in md
    assert "is not first by: rank-then-aggregate" in md  # the per-image view disagrees, and the report says why


def test_hd95_of_the_2d_images_uses_the_in_plane_diagonal():
    from autoseg.evaluation.metrics import case_metrics

    ref = ab_reference(1)
    pred = ab_predict_a(ref, 1)  # a sign where there is none: HD95 is the empty-structure penalty
    row = case_metrics(pred, ref, [3], AB_SPACING)[0]
    assert row["hd95"] == pytest.approx(np.hypot(40 * 1.0, 40 * 1.0))  # not ~999
