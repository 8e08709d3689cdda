"""``autoseg report``: evaluate (cached), analyse every comparison group and write the report in every format.

The jobs live apart: :mod:`~autoseg.evaluation.analysis` (statistics per group, the ranking methods),
:mod:`~autoseg.evaluation.sections` (what the report says, section by section) and
:mod:`~autoseg.evaluation.document` (Markdown, HTML and CSV output). This module wires them together.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from autoseg.evaluation.analysis import (
    GROUP_FIELDS,
    RANKING_METHODS,
    GroupAnalysis,
    GroupKey,
    analyse_group,
    headline_json,
    split_mismatches,
)
from autoseg.evaluation.document import RENDERERS, Doc, render
from autoseg.evaluation.scoring import Evaluation, env_path, evaluate
from autoseg.evaluation.sections import GROUP_SECTIONS, REPORT_SECTIONS, ReportContext
from autoseg.evaluation.tables import SPLIT_CV

__all__ = ["GROUP_FIELDS", "GROUP_SECTIONS", "RANKING_METHODS", "RENDERERS", "REPORT_SECTIONS", "Doc",
           "GroupAnalysis", "ReportResult", "analyse_group", "build_report", "headline_json", "render",
           "split_mismatches", "verdict"]

TITLE = "autoseg loss comparison"


@dataclass
class ReportResult:
    markdown: Path
    html: Path
    evaluation: Evaluation
    groups: list[GroupAnalysis]
    test_groups: list[tuple[str, GroupAnalysis]]

    def verdict(self) -> dict:
        """The headline ranking of every group (what ``autoseg report --json`` prints)."""
        return verdict(self.groups, self.test_groups)


def verdict(groups: Sequence[GroupAnalysis], test_groups: Sequence[tuple[str, GroupAnalysis]] = ()) -> dict:
    return {"groups": [headline_json(g) for g in groups],
            "test": [{**headline_json(g), "predictor": p} for p, g in test_groups]}


def _group_key(row: dict) -> GroupKey:
    return tuple(str(row[f]) for f in GROUP_FIELDS)  # type: ignore[return-value]


def analyse(rows: Sequence[dict], n_boot: int = 1000, seed: int = 0, alpha: float = 0.05,
            baseline: str | None = "dice_ce", progress: Callable[[str], None] | None = None
            ) -> tuple[list[GroupAnalysis], list[tuple[str, GroupAnalysis]]]:
    """Cross-validation groups and held-out test groups (one per group and predictor) of the evaluation rows."""
    say = progress or (lambda s: None)
    cv: dict[GroupKey, list[dict]] = {}
    test: dict[tuple[GroupKey, str], list[dict]] = {}
    for r in rows:
        if (r.get("split") or SPLIT_CV) == SPLIT_CV:
            cv.setdefault(_group_key(r), []).append(r)
        else:
            test.setdefault((_group_key(r), str(r["fold"])), []).append(r)
    groups = []
    for key, group_rows in sorted(cv.items()):
        say(f"analysing {' / '.join(key)}: {len({r['method'] for r in group_rows})} loss(es), "
            f"{len({r['case'] for r in group_rows})} case(s), {n_boot} bootstrap resamples")
        groups.append(analyse_group(group_rows, n_boot, seed, alpha, baseline))
    test_groups = []
    for (key, predictor), group_rows in sorted(test.items()):
        say(f"analysing the test set of {' / '.join(key)} predicted by {predictor}")
        test_groups.append((predictor, analyse_group(group_rows, n_boot, seed, alpha, baseline)))
    return groups, test_groups


def build_report(results: Path, out: Path, preprocessed: Path | None = None, raw: Path | None = None,
                 tolerances: dict[str, float] | float | None = None, distances: str = "auto", n_boot: int = 1000,
                 seed: int = 0, alpha: float = 0.05, progress: Callable[[str], None] | None = print,
                 workers: int = 1, baseline: str | None = "dice_ce") -> ReportResult:
    """Evaluate (cached) every run under ``results`` and write the report into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    preprocessed = preprocessed or env_path("nnUNet_preprocessed")
    raw = raw or env_path("nnUNet_raw")
    ev = evaluate(results, out / "tables" / "metrics.csv", preprocessed, raw, tolerances, distances, progress,
                  workers)
    say = progress or (lambda s: None)
    groups, test_groups = analyse(ev.rows, n_boot, seed, alpha, baseline, say)
    ctx = ReportContext(ev, groups, test_groups, preprocessed, raw, alpha, baseline)
    doc = Doc()
    for _, section in REPORT_SECTIONS:
        section(doc, ctx)
    written = render(doc, out, TITLE)
    say(f"wrote {written['markdown']} and {written['html']}")
    return ReportResult(written["markdown"], written["html"], ev, groups, test_groups)
