"""Report on synthetic results trees: known winner, indistinguishable twins, a missing fold, a failed run, an empty
class, a single fold; the CLI commands."""

from __future__ import annotations

import base64
import csv
import re

import numpy as np
import pytest
from eval_synthetic_tree import build_tree

from autoseg.evaluation.report import build_report


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_report")
    tree = build_tree(root)
    res = build_report(tree["results"], root / "report", tree["preprocessed"], tree["raw"], tolerances=1.0,
                       n_boot=200, progress=None)
    return res, root / "report"


def _csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_known_winner_twins_and_loser(report):
    res, out = report
    (g,) = res.groups
    assert g.methods[0] == "good" and g.methods[-1] == "bad"
    assert set(g.methods[1:3]) == {"twin_a", "twin_b"}
    # paired on the 10 cases of fold 0 (twin_b lacks fold 1): the 4 fold-1 cases of the others are left out
    assert len(g.cases) == 10 and g.excluded == {"good": 4, "twin_a": 4, "bad": 4}
    ranking = {r["loss"]: r for r in _csv(next((out / "tables").glob("ranking_*.csv")))}
    consensus = "consensus over metrics and classes"
    assert ranking["good"][consensus] == "1" and ranking["good"]["consensus 95% interval"] == "[1, 1]"
    assert ranking["bad"][consensus] == "4" and ranking["bad"]["consensus 95% interval"] == "[4, 4]"
    assert ranking["twin_a"][consensus] == ranking["twin_b"][consensus] == "2.5"
    # the headline (mean foreground Dice) ranks the same way and leads the table
    assert list(ranking["good"])[:2] == ["loss", "headline (DSC)"]
    assert [ranking[m]["headline (DSC)"] for m in ("good", "twin_a", "twin_b", "bad")] == ["1", "2.5", "2.5", "4"]
    dsc = {r["loss"]: r for r in _csv(next((out / "tables").glob("dsc_*.csv")))}
    assert dsc["good"]["rank 95% interval"] == "[1, 1]" and dsc["bad"]["rank 95% interval"] == "[4, 4]"
    # good beats all three (p = 2/2^10 * 6 after Holm), the twins only bad, bad nothing
    assert ranking["good"]["significant wins"] == "3" and ranking["bad"]["significant wins"] == "0"
    assert ranking["twin_a"]["significant wins"] == ranking["twin_b"]["significant wins"] == "1"
    i, j = g.methods.index("twin_a"), g.methods.index("twin_b")
    assert g.tests.p[i, j] == 1.0 and not g.tests.better[i, j] and not g.tests.better[j, i]
    assert g.tests.p_holm[0, -1] == pytest.approx(min(1.0, 6 * 2 / 2 ** 10))


def test_survey_tables_by_hand(report):
    res, out = report
    dsc = {r["loss"]: r for r in _csv(next((out / "tables").glob("dsc_*.csv")))}
    assert dsc["good"]["DSC avg (%)"] == "100.00 ± 0.00"
    assert dsc["good"]["HD95 avg (mm)"] == "0.00 ± 0.00"
    # the twins' tumour: 2x2 columns shifted by one -> Dice 0.5, except case 0 where both are empty -> 1
    expected = np.array([1.0] + [0.5] * 9) * 100
    assert dsc["twin_a"]["DSC tumour (%)"] == f"{expected.mean():.2f} ± {expected.std(ddof=1):.2f}"
    assert dsc["twin_a"]["DSC tumour (%)"] == dsc["twin_b"]["DSC tumour (%)"]


def test_missing_and_failed_runs_are_listed(report):
    res, out = report
    listed = {(r["loss"], r["fold"], r["status"]) for r in _csv(out / "tables" / "runs_not_evaluated.csv")}
    assert listed == {("twin_b", "1", "missing"), ("broken", "0", "failed"), ("broken", "1", "failed")}
    md = (out / "report.md").read_text()
    page = (out / "report.html").read_text()
    for text in ("twin_b", "fold folder missing", "status failed", "left out: bad 4"):
        assert text in md and text in page


def test_outputs_are_complete_and_html_is_self_contained(report):
    res, out = report
    page = (out / "report.html").read_text()
    figures = sorted(p.stem.split("_")[0] for p in (out / "figures").glob("*.png"))
    for kind in ("blob", "box", "cd", "curves", "progress", "qualitative", "significance"):
        assert kind in figures
    images = re.findall(r'<img [^>]*src="([^"]+)"', page)
    assert len(images) == len(list((out / "figures").glob("*.png")))
    assert figures.count("progress") == 7  # every evaluated run's progress.png
    assert all(src.startswith("data:image/png;base64,") for src in images)
    assert base64.b64decode(images[0].split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert "http://" not in page and "https://" not in page  # opens offline
    from_evaluate = {"metrics.csv", "metrics_runs.csv", "metrics_long.csv"}  # the tidy table and run list, not shown as tables
    assert from_evaluate <= {p.name for p in (out / "tables").glob("*.csv")}
    assert page.count("<table") == len(list((out / "tables").glob("*.csv"))) - len(from_evaluate)


def test_single_fold_still_reports(tmp_path):
    tree = build_tree(tmp_path, cases_per_fold=(4,), methods=("good", "bad"), missing=(), failed=(),
                      progress_png=False)
    res = build_report(tree["results"], tmp_path / "r", tree["preprocessed"], None, n_boot=50, progress=None)
    (g,) = res.groups
    assert g.methods == ["good", "bad"] and len(g.cases) == 4
    md = (tmp_path / "r" / "report.md").read_text()
    assert "cannot reach p < 0.05" in md  # 4 cases: the statistics it supports, and says so
    assert "No training log or progress.png" in md and "image not found" in md


def test_cli_evaluate_and_report(tmp_path, capsys):
    from autoseg.cli.main import main

    tree = build_tree(tmp_path, cases_per_fold=(3,), methods=("good", "bad"), missing=(), failed=(),
                      progress_png=False)
    pre = str(tree["preprocessed"])
    assert main(["evaluate", str(tree["results"]), "--preprocessed", pre, "--tolerance", "Dataset999_Toy=1.5"]) == 0
    out = capsys.readouterr().out
    assert "wrote 12 row(s)" in out and "[1/2]" in out
    assert main(["report", str(tree["results"]), "--preprocessed", pre, "--out", str(tmp_path / "r"),
                 "--bootstrap", "20"]) == 0
    assert (tmp_path / "r" / "report.html").exists()
    assert main(["evaluate", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["evaluate", str(tree["results"]), "--tolerance", "x=abc"]) == 2


def _counts(pred, ref, label):
    p, r = pred == label, ref == label
    return np.count_nonzero(p & r), np.count_nonzero(p & ~r), np.count_nonzero(~p & r)


def test_natural_images_report_dataset_level_iou(tmp_path):
    from eval_synthetic_tree import PREDICT, reference

    tree = build_tree(tmp_path, cases_per_fold=(3,), methods=("good", "twin_a"), missing=(), failed=(),
                      progress_png=False, natural=True)
    res = build_report(tree["results"], tmp_path / "r", tree["preprocessed"], None, n_boot=50, progress=None)
    (g,) = res.groups
    assert g.natural and g.primary_name == "IoU"
    table = {r["loss"]: r for r in _csv(next((tmp_path / "r" / "tables").glob("iou_*.csv")))}
    # expected by counting voxels directly: one confusion matrix summed over the three images
    expected = {}
    for label, name in ((0, "sky"), (1, "organ"), (2, "tumour")):
        tp = fp = fn = 0
        for i in range(3):
            a, b, c = _counts(PREDICT["twin_a"](reference(i), i), reference(i), label)
            tp, fp, fn = tp + a, fp + b, fn + c
        expected[name] = tp / (tp + fp + fn) * 100
    assert table["twin_a"]["IoU organ (%)"] == f"{expected['organ']:.2f}"
    assert table["twin_a"]["IoU tumour (%)"] == f"{expected['tumour']:.2f}"
    assert table["twin_a"]["IoU sky (%)"] == f"{expected['sky']:.2f}"  # class 0, under its real name
    assert table["twin_a"]["mIoU (%)"] == f"{sum(expected.values()) / 3:.2f}"  # over all three classes
    assert table["good"]["mIoU (%)"] == "100.00" and table["good"]["sd (bootstrap)"] == "0.00"
    assert "dataset-level" in (tmp_path / "r" / "report.md").read_text()
    # precision / recall per class, one confusion matrix over the images as for the IoU
    pr = {r["loss"]: r for r in _csv(next((tmp_path / "r" / "tables").glob("precision_recall_*.csv")))}
    for label, name in ((0, "sky"), (2, "tumour")):
        tp = fp = fn = 0
        for i in range(3):
            a, b, c = _counts(PREDICT["twin_a"](reference(i), i), reference(i), label)
            tp, fp, fn = tp + a, fp + b, fn + c
        assert pr["twin_a"][f"{name} precision / recall (%)"] == f"{tp / (tp + fp) * 100:.1f} / {tp / (tp + fn) * 100:.1f}"
    assert pr["good"]["organ precision / recall (%)"] == "100.0 / 100.0"


def test_friedman_across_configurations(tmp_path):
    import json
    import shutil

    tree = build_tree(tmp_path, cases_per_fold=(6,), methods=("good", "twin_a", "bad"), missing=(), failed=(),
                      progress_png=False)
    ds = tree["results"] / "Dataset999_Toy"
    for folder in list(ds.iterdir()):  # the same predictions again as a second configuration
        copy = ds / folder.name.replace("3d_fullres", "2d")
        shutil.copytree(folder, copy)
        meta_path = copy / "fold_0" / "autoseg.json"
        meta = json.loads(meta_path.read_text())
        meta["configuration"] = "2d"
        meta_path.write_text(json.dumps(meta))
    res = build_report(tree["results"], tmp_path / "r", tree["preprocessed"], None, n_boot=20, progress=None)
    assert len(res.groups) == 2
    rows = {r["loss"]: r for r in _csv(tmp_path / "r" / "tables" / "friedman_across_groups.csv")}
    # same order in both blocks: rank sums 2, 4, 6; chi2 = 12/(2*3*4) * (4+16+36) - 3*2*4 = 4
    assert {m: r["average rank"] for m, r in rows.items()} == {"good": "1.00", "twin_a": "2.00", "bad": "3.00"}
    md = (tmp_path / "r" / "report.md").read_text()
    assert "chi2 = 4.000" in md and (tmp_path / "r" / "figures" / "cd_across_groups.png").exists()
    # the same predictions in both configurations: the same order, tau 1
    tau = list(csv.reader(open(tmp_path / "r" / "tables" / "kendall_across_groups.csv")))
    assert tau[1][1] == "1" and tau[1][2].startswith("1.00 (p ") and tau[2][1].startswith("1.00 (p ")


def test_one_loss_only(tmp_path):
    tree = build_tree(tmp_path, cases_per_fold=(3,), methods=("good",), missing=(), failed=(), progress_png=False)
    res = build_report(tree["results"], tmp_path / "r", tree["preprocessed"], None, n_boot=10, progress=None)
    assert res.groups[0].tests is None and (tmp_path / "r" / "report.html").exists()


def test_different_validation_cases_in_a_fold_are_flagged(tmp_path):
    from autoseg.evaluation.report import split_mismatches

    rows = [{"fold": "0", "method": m, "case": c} for m, cs in (("a", "xyz"), ("b", "xy")) for c in cs]
    rows += [{"fold": "1", "method": m, "case": "w"} for m in "ab"]
    assert split_mismatches(rows) == {"0": "b lacks 1: z"}
    tree = build_tree(tmp_path, cases_per_fold=(4,), methods=("good", "bad"), missing=(), failed=(),
                      progress_png=False)
    (tree["results"] / "Dataset999_Toy" / "nnUNetTrainer_autoseg_bad__nnUNetPlans__3d_fullres" / "fold_0"
     / "validation" / "toy_001.nii.gz").unlink()
    build_report(tree["results"], tmp_path / "r", tree["preprocessed"], None, n_boot=10, progress=None)
    md = (tmp_path / "r" / "report.md").read_text()
    assert "WARNING: the validation cases of fold 0 differ between losses (bad lacks 1: toy_001)" in md


def _case_means(rows, method, fold=None):
    """Per-case mean Dice over the classes of a method (optionally one fold), from the tidy rows."""
    by_case = {}
    for r in rows:
        if r["method"] == method and (fold is None or r["fold"] == fold):
            by_case.setdefault(r["case"], []).append(r["dice"])
    return {c: float(np.mean(v)) for c, v in by_case.items()}


def test_per_fold_table_by_hand(report):
    res, out = report
    folds = {r["loss"]: r for r in _csv(next((out / "tables").glob("folds_*.csv")))}
    rows = res.evaluation.rows
    f0 = np.mean(list(_case_means(rows, "twin_a", "0").values()))
    f1 = np.mean(list(_case_means(rows, "twin_a", "1").values()))
    assert folds["twin_a"]["fold 0 (%)"] == f"{f0 * 100:.2f}" and folds["twin_a"]["fold 1 (%)"] == f"{f1 * 100:.2f}"
    assert folds["twin_a"]["mean over folds (%)"] == f"{(f0 + f1) / 2 * 100:.2f}"
    assert folds["twin_a"]["sd over folds (%)"] == f"{np.std([f0, f1], ddof=1) * 100:.2f}"
    # twin_b has no fold 1: its row says so rather than averaging over another set of folds silently
    assert folds["twin_b"]["fold 1 (%)"] == "-" and folds["twin_b"]["sd over folds (%)"] == "-"
    assert folds["good"]["fold 0 (%)"] == folds["good"]["mean over folds (%)"] == "100.00"


def test_paired_differences_against_the_baseline(report):
    res, out = report
    (g,) = res.groups
    md = (out / "report.md").read_text()
    # dice_ce is not among these losses: the report says so and compares with the headline's first loss
    assert "the baseline loss dice_ce is not in this group" in md and g.baseline == "good"
    diffs = {r["loss"]: r for r in _csv(next((out / "tables").glob("vs_baseline_*.csv")))}
    assert set(diffs) == {"twin_a", "twin_b", "bad"}
    bad, good = _case_means(res.evaluation.rows, "bad"), _case_means(res.evaluation.rows, "good")
    paired = g.cases  # the 10 cases every loss has
    expected = np.mean([bad[c] - good[c] for c in paired]) * 100
    assert diffs["bad"]["Δ DSC vs good (points)"] == f"{expected:+.2f}"
    low, high = (float(x) for x in diffs["bad"]["95% CI"].strip("[]").split(", "))
    assert low <= expected <= high < 0
    assert float(diffs["bad"]["Wilcoxon p (Holm)"]) == pytest.approx(g.tests.p_holm[g.methods.index("bad"), 0],
                                                                     rel=1e-2)


def test_headline_interval_and_hd95_median(report):
    res, out = report
    dsc = {r["loss"]: r for r in _csv(next((out / "tables").glob("dsc_*.csv")))}
    (g,) = res.groups
    good = [np.mean([r["dice"] for r in res.evaluation.rows if r["method"] == "good" and r["case"] == c])
            for c in g.cases]
    assert dsc["good"]["95% CI"] == "[100.00, 100.00]" and np.mean(good) == 1.0
    hd = {r["loss"]: r for r in _csv(next((out / "tables").glob("hd95_*.csv")))}
    bad_tumour = [r["hd95"] for r in res.evaluation.rows if r["method"] == "bad" and r["class_name"] == "tumour"
                  and r["case"] in g.cases]
    assert hd["bad"]["HD95 tumour median (mm)"] == f"{np.median(bad_tumour):.2f}"
    assert "HD95 median (mm)" in dsc["bad"]


def test_empty_structure_counts(report):
    res, out = report
    counts = {(r["loss"], r["class"]): r for r in _csv(next((out / "tables").glob("empty_*.csv")))}
    # toy_000 has no tumour: good leaves it empty, bad predicts one there
    assert counts[("good", "tumour")] == {"loss": "good", "class": "tumour", "cases": "14", "empty reference": "1",
                                          "empty prediction": "1", "both empty": "1"}
    assert (counts[("bad", "tumour")]["empty reference"], counts[("bad", "tumour")]["empty prediction"]) == ("1", "0")
    assert counts[("twin_b", "organ")]["cases"] == "10"  # its fold 1 is missing


def test_cost_of_the_runs_and_the_short_training_statement(report):
    res, out = report
    cost = _csv(next((out / "tables").glob("cost_*.csv")))
    row = next(r for r in cost if r["loss"] == "good" and r["fold"] == "1")
    # autoseg.json says seconds 13.0 and device cpu; the training log 2 epochs of 1.5 s; the budget 2 epochs
    assert (row["device"], row["epochs completed / planned"], row["wall time"], row["s per epoch"]) == (
        "cpu", "2 / 2", "13 s", "1.50")
    md = (out / "report.md").read_text()
    assert "short training may rank losses differently from full training" in md.lower()


def test_friedman_with_iman_davenport_and_cd_only_when_rejected(report, tmp_path):
    res, out = report
    md = (out / "report.md").read_text()
    (g,) = res.groups
    assert f"Iman-Davenport F = {g.friedman.f_statistic:.3f}" in md and g.friedman.rejects(0.05)
    assert any(p.name.startswith("cd_cases_") for p in (out / "figures").iterdir())
    # two indistinguishable losses: Friedman does not reject, and no diagram is drawn
    tree = build_tree(tmp_path, cases_per_fold=(6,), methods=("twin_a", "twin_b"), missing=(), failed=(),
                      progress_png=False)
    r2 = build_report(tree["results"], tmp_path / "r", tree["preprocessed"], None, n_boot=20, progress=None)
    assert not r2.groups[0].friedman.rejects(0.05)
    assert "No critical-difference diagram: the Friedman test does not reject" in (tmp_path / "r" / "report.md"
                                                                                   ).read_text()
    assert not list((tmp_path / "r" / "figures").glob("cd_cases_*"))


def test_long_table_for_challenger(report):
    res, out = report
    long = _csv(out / "tables" / "metrics_long.csv")
    assert list(long[0]) == ["task", "case", "algorithm", "value"]
    # one value per (task, case, algorithm): DSC, IoU, HD95 and NSD of two classes for every evaluated row pair
    keys = {(r["task"], r["case"], r["algorithm"]) for r in long}
    assert len(keys) == len(long) == len(res.evaluation.rows) * 4
    task = "Dataset999_Toy/3d_fullres/cnn/nnUNetPlans/quick: DSC tumour"
    twin = next(r for r in long if r["task"] == task and r["case"] == "toy_005" and r["algorithm"] == "twin_a")
    assert float(twin["value"]) == 0.5


def test_test_set_rows_are_shown_apart_from_cross_validation(tmp_path, monkeypatch):
    """The contract with the test-set scorer: rows with split "test" (fold: what predicted them) go to their own
    section and never into the cross-validation statistics."""
    from autoseg.evaluation import report as report_module
    from autoseg.evaluation.scoring import evaluate as real_evaluate

    tree = build_tree(tmp_path, cases_per_fold=(6,), methods=("good", "bad"), missing=(), failed=(),
                      progress_png=False)

    def with_test_rows(*args, **kwargs):
        ev = real_evaluate(*args, **kwargs)
        test = [{**r, "split": "test", "fold": "ensemble", "case": "test_" + r["case"]} for r in ev.rows
                if r["case"] in ("toy_001", "toy_002", "toy_003")]
        ev.rows = ev.rows + test
        return ev

    monkeypatch.setattr(report_module, "evaluate", with_test_rows)
    res = build_report(tree["results"], tmp_path / "r", tree["preprocessed"], None, n_boot=20, progress=None)
    (g,) = res.groups
    assert len(g.cases) == 6 and not any(c.startswith("test_") for c in g.cases)  # CV untouched
    ((predictor, t),) = res.test_groups
    assert predictor == "ensemble" and t.cases == ["test_toy_001", "test_toy_002", "test_toy_003"]
    assert t.methods[0] == "good"
    md = (tmp_path / "r" / "report.md").read_text()
    cv_at, test_at = md.index("# Dataset999_Toy"), md.index("# Held-out test set (separate from cross-validation)")
    assert cv_at < test_at and "predicted by ensemble" in md[test_at:]
    test_table = {r["loss"]: r for r in _csv(next((tmp_path / "r" / "tables").glob("dsc_test_*.csv")))}
    assert test_table["good"]["DSC avg (%)"] == "100.00 ± 0.00"
    assert res.verdict()["test"][0]["predictor"] == "ensemble"


def test_no_test_set_is_said(report):
    _, out = report
    assert "No held-out test-set results were found" in (out / "report.md").read_text()


def test_precision_recall_and_volume_ratio_by_counting_voxels(report):
    from eval_synthetic_tree import PREDICT, reference

    res, out = report
    (g,) = res.groups
    table = {r["loss"]: r for r in _csv(next((out / "tables").glob("precision_recall_*.csv")))}
    assert table["good"]["precision (%) organ"] == "100.00" and table["good"]["volume ratio tumour"] == "1.000"
    # by hand: the tumour is a 2 x 2 x 2 box; rolled by one voxel, half of it stays (case 0 has none, predicts none)
    assert table["twin_a"]["precision (%) tumour"] == table["twin_a"]["recall (%) tumour"] == "50.00"
    assert table["twin_a"]["volume ratio tumour"] == "1.000"
    # bad: rolled by three voxels, the 2-voxel tumour is missed everywhere (and one is invented in case 0)
    assert table["bad"]["precision (%) tumour"] == "0.00" and table["bad"]["recall (%) tumour"] == "0.00"
    # every cell against the voxels counted directly, summed over the paired cases
    cases = [int(c.split("_")[1]) for c in g.cases]
    for method in ("twin_a", "bad"):
        for label, name in ((1, "organ"), (2, "tumour")):
            tp = fp = fn = 0
            for i in cases:
                a, b, c = _counts(PREDICT[method](reference(i), i), reference(i), label)
                tp, fp, fn = tp + a, fp + b, fn + c
            assert table[method][f"precision (%) {name}"] == f"{tp / (tp + fp) * 100:.2f}"
            assert table[method][f"recall (%) {name}"] == f"{tp / (tp + fn) * 100:.2f}"
            assert table[method][f"volume ratio {name}"] == f"{(tp + fp) / (tp + fn):.3f}"
    assert "Over- and under-segmentation" in (out / "report.md").read_text()


def test_precision_recall_edge_cases():
    from autoseg.evaluation.metrics import pooled_precision_recall

    # [cases, methods, classes]: method 0 predicts nothing of a present class; method 1 predicts an absent class
    tp = np.array([[[0.0], [0.0]], [[0.0], [0.0]]])
    fp = np.array([[[0.0], [3.0]], [[0.0], [1.0]]])
    fn = np.array([[[2.0], [0.0]], [[5.0], [0.0]]])
    p, r, v = pooled_precision_recall(tp, fp, fn)
    assert np.isnan(p[0, 0]) and r[0, 0] == 0.0 and v[0, 0] == 0.0
    assert p[1, 0] == 0.0 and np.isnan(r[1, 0]) and np.isnan(v[1, 0])
    # NaN counts (a metric row without counts) count as zero, as in the ranking's pooled IoU statistic
    p, r, v = pooled_precision_recall(np.array([[3.0], [np.nan]]), np.array([[1.0], [1.0]]), np.array([[1.0], [0.0]]))
    assert p[0] == pytest.approx(0.6) and r[0] == pytest.approx(0.75) and v[0] == pytest.approx(1.25)
