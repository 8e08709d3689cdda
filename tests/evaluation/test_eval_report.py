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
    assert ranking["good"]["consensus rank"] == "1" and ranking["good"]["95% interval"] == "[1, 1]"
    assert ranking["bad"]["consensus rank"] == "4" and ranking["bad"]["95% interval"] == "[4, 4]"
    assert ranking["twin_a"]["consensus rank"] == ranking["twin_b"]["consensus rank"] == "2.5"
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
    for kind in ("blob", "box", "cd", "progress", "qualitative", "significance"):
        assert kind in figures
    images = re.findall(r'<img [^>]*src="([^"]+)"', page)
    assert len(images) == len(list((out / "figures").glob("*.png")))
    assert all(src.startswith("data:image/png;base64,") for src in images)
    assert base64.b64decode(images[0].split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert "http://" not in page and "https://" not in page  # opens offline
    from_evaluate = {"metrics.csv", "metrics_runs.csv"}  # the tidy table and run list, not shown as tables
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
    assert "No progress.png" in md and "image not found" in md


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
