"""Scoring of held-out test-set predictions (``<trainer folder>/test_predictions/<predictor>/``, written by
:mod:`autoseg.heldout`) against ``labelsTs``: rows of the tidy table with ``split == "test"``.

A test "run" has the identity of the trainer folder's cross-validation runs (dataset, configuration, loss, budget...)
and, in the ``fold`` column, what predicted it: ``ensemble`` (the trained folds together) or the fold number
(from ``test_predictions/fold_<N>``). The same
metrics, empty-structure policy and per-case cache as cross-validation apply.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path

from autoseg.evaluation.dataset import load_dataset_info
from autoseg.evaluation.runs import Run
from autoseg.evaluation.scoring import CACHE_NAME, score_cases, tolerance_for
from autoseg.evaluation.tables import SPLIT_TEST


def find_test_runs(runs: Sequence[Run]) -> list[tuple[Run, Run]]:
    """``(test run, a cross-validation run of the same trainer folder)`` for every test prediction folder found
    beside the given runs; the second supplies the dataset.json and the identity."""
    from autoseg.heldout import prediction_folders, read_prediction_meta

    templates: dict[Path, Run] = {}
    for r in runs:
        current = templates.get(r.path.parent)
        if current is None or (current.status != "done" and r.status == "done"):
            templates[r.path.parent] = r
    out = []
    for run_dir, template in sorted(templates.items()):
        for folder in prediction_folders(run_dir):
            meta = read_prediction_meta(folder) or {}
            fold = folder.name.removeprefix("fold_")  # docs/evaluation.md: "ensemble", or a fold number
            test = dataclasses.replace(template, path=folder, fold=fold, status=str(meta.get("status", "unknown")),
                                       state="", n_cases=0, n_computed=0)
            out.append((test, template))
    return out


def evaluate_test_run(test: Run, template: Run, preprocessed: Path | None = None, raw: Path | None = None,
                      tolerance_mm: float = 2.0, distances: str = "auto", pool=None) -> list[dict]:
    """Rows (``split`` "test") of one test prediction folder; sets ``test.state``, ``n_cases`` and ``n_computed``.

    References: ``<raw>/<dataset>/labelsTs``, else the ``labels_dir`` recorded when the predictions were made.
    """
    from autoseg.heldout import read_prediction_meta

    info = load_dataset_info(template, preprocessed, raw)
    test.natural_image = info.natural_image
    with_distances = distances == "always" or (distances == "auto" and not info.natural_image)
    meta = read_prediction_meta(test.path) or {}
    candidates = ([Path(raw) / test.dataset / "labelsTs"] if raw else []) + \
                 ([Path(meta["labels_dir"])] if meta.get("labels_dir") else [])
    labels_dir = next((p for p in candidates if p.is_dir()), None)
    if labels_dir is None:
        test.state = "test set not scored: no labelsTs found" + (f" (looked in {', '.join(map(str, candidates))})"
                                                                  if candidates else "")
        return []
    ending = info.file_ending
    refs = sorted(p for p in labels_dir.glob(f"*{ending}") if p.is_file())
    pairs, unpredicted = [], []
    for ref in refs:
        case = ref.name[: -len(ending)]
        pred = test.path / ref.name
        if pred.is_file():
            pairs.append((case, pred, ref))
        else:
            unpredicted.append(case)
    scored, computed = score_cases(pairs, test.path / CACHE_NAME, info, tolerance_mm, with_distances, pool)
    identity = test.identity()
    rows = [{**identity, "case": case, "class_name": info.class_name(r["label"]),
             "nsd_tolerance_mm": tolerance_mm if with_distances else float("nan"), **r, "split": SPLIT_TEST}
            for case, metric_rows in scored.items() for r in metric_rows]
    test.n_cases, test.n_computed = len(scored), computed
    test.state = "evaluated (test set)"
    if unpredicted:
        # A partial test set would not be comparable between losses; the rows are kept, the state says it.
        test.state = (f"evaluated (test set); {len(unpredicted)} of {len(refs)} test case(s) not predicted: "
                      f"{', '.join(unpredicted[:5])} (rerun autoseg predict-test)")
    return rows


def evaluate_test_sets(runs: Sequence[Run], rows: list[dict], say: Callable[[str], None], preprocessed, raw,
                       tolerances, distances: str, pool=None) -> list[Run]:
    """Score every test prediction folder beside ``runs`` into ``rows``; returns the test runs with their state."""
    out = []
    pairs = find_test_runs(runs)
    for i, (test, template) in enumerate(pairs, 1):
        label = f"[test {i}/{len(pairs)}] {test.dataset} {test.configuration} {test.method} {test.fold}"
        stale = _staleness(test, template)
        if test.status != "done":
            test.state = f"not evaluated: test prediction status {test.status} (rerun autoseg predict-test)"
        elif stale:
            test.state = f"not evaluated: {stale} (rerun autoseg predict-test)"
        else:
            try:
                rows.extend(evaluate_test_run(test, template, preprocessed, raw, tolerance_for(test.dataset, tolerances),
                                              distances, pool))
            except (OSError, ValueError, RuntimeError) as e:
                test.state = f"error: {e}"
        counts = f" ({test.n_cases} cases, {test.n_computed} computed)" if test.n_cases else ""
        say(f"{label}: {test.state}{counts}")
        out.append(test)
    for test in _recorded_test_runs(runs, rows, tolerances, distances):
        say(f"[test] {test.dataset} {test.configuration} {test.method} {test.fold}: {test.state}"
            + (f" ({test.n_cases} cases)" if test.n_cases else ""))
        out.append(test)
    return out


def _recorded_test_runs(runs: Sequence[Run], rows: list[dict], tolerances, distances: str) -> list[Run]:
    """Test rows a run's record holds (``autoseg benchmark --test-set``) where its own prediction folder
    (``test_predictions/fold_<N>``) is not there to score: a result store reports like the results folder, as
    :func:`autoseg.evaluation.scoring.evaluate_run` does for the validation rows."""
    from autoseg.evaluation.store_rows import test_rows_from_record
    from autoseg.heldout import META_NAME, TEST_DIR, fold_folder
    from autoseg.records import FoldRecord

    out = []
    for run in runs:
        if run.status != "done" or not (run.meta or {}).get("test"):
            continue
        if (run.path.parent / TEST_DIR / fold_folder(run.fold) / META_NAME).is_file():
            continue  # scored from the predictions above
        try:
            record = FoldRecord.from_dict(run.meta)  # the run's autoseg.json, as read when the run was found
        except (TypeError, ValueError):
            continue
        test = dataclasses.replace(run, state="", n_cases=0, n_computed=0)
        rows.extend(test_rows_from_record(record, test, tolerance_for(test.dataset, tolerances), distances))
        out.append(test)
    return out



def _staleness(test: Run, template: Run) -> str:
    from autoseg.evaluation.runs import read_json
    from autoseg.heldout import staleness

    dataset_json = read_json(template.path.parent / "dataset.json") or {}
    return staleness(test.path, template.path.parent, (dataset_json.get("autoseg") or {}).get("n_cv_folds"))
