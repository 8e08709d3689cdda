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
