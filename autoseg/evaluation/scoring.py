"""Scoring of finished runs: the metrics of every validation case, cached per case in the fold folder, into rows of
the tidy table; :func:`evaluate` does every run under a results folder and writes the CSVs."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from autoseg.evaluation.dataset import DatasetInfo, load_dataset_info, read_segmentation, reference_for
from autoseg.evaluation.metrics import METRICS_VERSION, case_metrics
from autoseg.evaluation.runs import Run, find_runs, missing_folds, read_json
from autoseg.evaluation.tables import (
    LONG_COLUMNS,
    RUNS_TABLE_COLUMNS,
    SPLIT_CV,
    TABLE_COLUMNS,
    atomic_write_text,
    long_rows,
    write_table,
)

CACHE_NAME = "autoseg_metrics_cache.json"
TABLE_NAME = "autoseg_evaluation.csv"
RUNS_NAME = "autoseg_runs.csv"


def tolerance_for(dataset: str, tolerances: dict[str, float] | float | None, default: float = 2.0) -> float:
    """NSD tolerance (mm) of a dataset: ``{"Dataset501_Hippocampus": 1.0, "*": 2.0}`` or one number."""
    if tolerances is None:
        return default
    if isinstance(tolerances, (int, float)):
        return float(tolerances)
    return float(tolerances.get(dataset, tolerances.get("*", default)))


def _stat(path: Path) -> str:
    st = path.stat()
    return f"{path}:{st.st_size}:{st.st_mtime_ns}"


def compute_case(pred_path: Path, ref_path: Path, labels: list[int], tolerance_mm: float, ignore_label: int | None,
                 with_distances: bool) -> list[dict]:
    """Metric rows of one case read from disk (top level so that worker processes can run it)."""
    pred, _ = read_segmentation(pred_path)
    ref, spacing = read_segmentation(ref_path)
    if pred.shape != ref.shape:
        raise ValueError(f"{pred_path}: shape {pred.shape} differs from its reference {ref_path} {ref.shape}")
    rows = case_metrics(pred, ref, labels, spacing, tolerance_mm, ignore_label, with_distances)
    for r in rows:
        r["spacing"] = "x".join(f"{s:g}" for s in spacing)
    return rows


def score_cases(pairs: list[tuple[str, Path, Path]], cache_path: Path, info: DatasetInfo, tolerance_mm: float,
                with_distances: bool, pool=None) -> tuple[dict[str, list[dict]], int]:
    """Metric rows of each ``(case, prediction, reference)``, from the cache file when the inputs did not change.

    The cache is keyed on both files' size and modification time, the labels, the tolerance and the metric
    version; it is rewritten atomically even when a case fails or the user interrupts, so finished cases are kept.
    Returns ``({case: rows}, number computed)`` in the order of ``pairs``.
    """
    labels = info.evaluated_labels()
    cache = read_json(cache_path) or {}
    cached = cache.get("cases", {}) if cache.get("version") == METRICS_VERSION else {}
    new_cache: dict[str, dict] = {}
    todo: list[tuple[str, str, Path, Path]] = []
    for case, pred_path, ref_path in pairs:
        key = hashlib.sha1(json.dumps([METRICS_VERSION, tolerance_mm, with_distances, labels, info.ignore_label,
                                       _stat(pred_path), _stat(ref_path)]).encode()).hexdigest()
        entry = cached.get(case)
        if entry is None or entry.get("key") != key:
            todo.append((case, key, pred_path, ref_path))
        else:
            new_cache[case] = entry
    args = [(p, r, labels, tolerance_mm, info.ignore_label, with_distances) for _, _, p, r in todo]
    if pool is not None and len(todo) > 1:
        results = pool.map(compute_case, *zip(*args))
    else:
        results = (compute_case(*a) for a in args)
    computed = 0
    try:
        for (case, key, _, _), metric_rows in zip(todo, results):
            new_cache[case] = {"key": key, "rows": metric_rows}
            computed += 1
    finally:  # keep what was computed, even when a case fails or the user interrupts
        if computed or set(new_cache) != set(cached):
            try:
                atomic_write_text(cache_path, json.dumps({"version": METRICS_VERSION, "cases": new_cache}))
            except OSError:  # a read-only results tree still gets evaluated, just not cached
                pass
    return {case: new_cache[case]["rows"] for case, _, _ in pairs if case in new_cache}, computed


def evaluate_run(run: Run, preprocessed: Path | None = None, raw: Path | None = None, tolerance_mm: float = 2.0,
                 distances: str = "auto", pool=None) -> list[dict]:
    """Rows of one finished run, reading the per-case cache in the fold folder and updating it.

    ``distances``: "auto" (HD95 and NSD for volumes, not for natural images), "always" or "never".
    ``pool``: an executor whose ``map`` computes the new cases in parallel (None: in this process).
    Sets ``run.state``, ``run.n_cases`` and ``run.n_computed``.
    """
    if not (run.path / "validation").is_dir():
        # a result store (or a results folder without predictions): the metric rows the run recorded
        from autoseg.evaluation.store_rows import rows_from_record
        from autoseg.records import read_record

        try:
            record = read_record(run.path)
        except ValueError:
            record = None
        stored = rows_from_record(record, run, tolerance_mm, distances) if record is not None else None
        if stored is not None:
            return stored
    info = load_dataset_info(run, preprocessed, raw)
    run.natural_image = info.natural_image
    with_distances = distances == "always" or (distances == "auto" and not info.natural_image)
    val = run.path / "validation"
    ending = info.file_ending
    preds = sorted(p for p in val.glob(f"*{ending}") if p.is_file()) if val.is_dir() else []
    if not preds:
        run.state = "no validation predictions"
        return []
    summary = read_json(val / "summary.json") or {}
    summary_refs = {}
    for entry in summary.get("metric_per_case", []):
        pf, rf = entry.get("prediction_file"), entry.get("reference_file")
        if pf and rf:
            summary_refs[Path(pf).name[: -len(ending)]] = rf
    pairs, missing_refs = [], []
    for pred_path in preds:
        case = pred_path.name[: -len(ending)]
        ref_path = reference_for(case, info, run, preprocessed, raw, summary_refs)
        if ref_path is None:
            missing_refs.append(case)
        else:
            pairs.append((case, pred_path, ref_path))
    scored, computed = score_cases(pairs, run.path / CACHE_NAME, info, tolerance_mm, with_distances, pool)
    identity = run.identity()
    rows: list[dict] = []
    for case, metric_rows in scored.items():
        for r in metric_rows:
            rows.append({**identity, "case": case, "class_name": info.class_name(r["label"]),
                         "nsd_tolerance_mm": tolerance_mm if with_distances else float("nan"), **r,
                         "split": SPLIT_CV})
    run.n_cases, run.n_computed = len(scored), computed
    if missing_refs:
        run.state = f"evaluated; no reference for {len(missing_refs)} case(s): {', '.join(missing_refs[:5])}"
    else:
        run.state = "evaluated"
    if not scored:
        run.state = f"no reference segmentations found for {len(missing_refs)} prediction(s)"
    return rows


@dataclass
class Evaluation:
    """The tidy table (rows), every run found with what happened to it, and where the CSVs went.

    ``datasets`` holds what was read of each dataset (labels, real class names, classes left out on purpose).
    Rows with ``split == "test"`` are held-out test-set results; the report shows them apart from the
    cross-validation rows (``split == "cv"``).
    """

    rows: list[dict]
    runs: list[Run]
    table_path: Path | None = None
    runs_path: Path | None = None
    datasets: dict[str, DatasetInfo] = field(default_factory=dict)
    long_path: Path | None = None
    test_runs: list[Run] = field(default_factory=list)  # held-out test-set predictions (fold: their predictor)


def evaluate(results: Path, out: Path | None = None, preprocessed: Path | None = None, raw: Path | None = None,
             tolerances: dict[str, float] | float | None = None, distances: str = "auto",
             progress: Callable[[str], None] | None = print, workers: int = 1) -> Evaluation:
    """Evaluate every finished run under ``results`` and write the table (``out``), its long form and the run list.

    ``out`` defaults to ``<results>/autoseg_evaluation.csv``; the run list goes to ``autoseg_runs.csv`` and the long
    table (task, case, algorithm, value) to ``autoseg_evaluation_long.csv`` in the same folder. Runs not done,
    missing folds and runs without predictions are in the run list with the reason. ``workers`` > 1 computes the
    cases of a run in that many processes.
    """
    results = Path(results)
    if not results.is_dir():
        raise FileNotFoundError(f"results folder {results} does not exist")
    preprocessed = preprocessed or env_path("nnUNet_preprocessed")
    raw = raw or env_path("nnUNet_raw")
    runs = find_runs(results)
    say = progress or (lambda s: None)
    rows: list[dict] = []
    datasets: dict[str, DatasetInfo] = {}
    say(f"found {len(runs)} fold folder(s) under {results}")
    pool = None
    if workers > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # spawn, not fork: the parent may hold torch threads
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    try:
        _evaluate_runs(runs, rows, datasets, say, preprocessed, raw, tolerances, distances, pool)
        from autoseg.evaluation.heldout_scoring import evaluate_test_sets

        test_runs = evaluate_test_sets(runs, rows, say, preprocessed, raw, tolerances, distances, pool)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    all_runs = runs + missing_folds(runs)
    for m in all_runs[len(runs):]:
        say(f"missing: {m.dataset} {m.configuration} {m.method} fold {m.fold}")
    out = Path(out) if out else results / TABLE_NAME
    write_table(out, rows, TABLE_COLUMNS)
    runs_path = out.with_name(RUNS_NAME) if out.name == TABLE_NAME else out.with_name(out.stem + "_runs.csv")
    write_table(runs_path, [r.as_row() for r in all_runs + test_runs], RUNS_TABLE_COLUMNS)
    long_path = out.with_name(out.stem + "_long.csv")
    write_table(long_path, long_rows(rows), LONG_COLUMNS)
    return Evaluation(rows, all_runs, out, runs_path, datasets, long_path, test_runs)


def _evaluate_runs(runs: list[Run], rows: list[dict], datasets: dict[str, DatasetInfo], say: Callable[[str], None],
                   preprocessed, raw, tolerances, distances: str, pool) -> None:
    for i, run in enumerate(runs, 1):
        label = f"[{i}/{len(runs)}] {run.dataset} {run.configuration} {run.method} fold {run.fold}"
        if run.status != "done":
            run.state = f"not evaluated: status {run.status}"
        elif not run.fold.isdigit():
            run.state = "not evaluated: fold_all has no held-out validation"
        else:
            try:
                rows.extend(evaluate_run(run, preprocessed, raw, tolerance_for(run.dataset, tolerances), distances,
                                         pool))
                if run.dataset not in datasets:
                    datasets[run.dataset] = load_dataset_info(run, preprocessed, raw)
            except (OSError, ValueError, RuntimeError) as e:
                run.state = f"error: {e}"
        counts = f" ({run.n_cases} cases, {run.n_computed} computed)" if run.n_cases else ""
        say(f"{label}: {run.state}{counts}")


def env_path(name: str) -> Path | None:
    """An environment variable holding a folder, or None when it is unset or empty."""
    value = os.environ.get(name)
    return Path(value) if value else None
