"""Collection of results, one import away: runs (discovery), dataset (labels, references), scoring (per-case
metrics and their cache), tables (CSV files) and training_log (curves and cost) re-exported under their old names.

New code imports from the module that does the job; this module keeps ``autoseg.evaluation.collect.X`` working.
"""

from __future__ import annotations

from autoseg.evaluation.dataset import (
    DatasetInfo,
    dataset_info_from_json,
    load_dataset_info,
    read_segmentation,
    reference_for,
)
from autoseg.evaluation.runs import Run, find_runs, fold_key, method_name, missing_folds, parse_run, read_json
from autoseg.evaluation.scoring import (
    CACHE_NAME,
    RUNS_NAME,
    TABLE_NAME,
    Evaluation,
    compute_case,
    evaluate,
    evaluate_run,
    score_cases,
    tolerance_for,
)
from autoseg.evaluation.tables import (
    CASE_COLUMNS,
    LONG_COLUMNS,
    RUN_COLUMNS,
    RUNS_TABLE_COLUMNS,
    SPLIT_CV,
    SPLIT_TEST,
    TABLE_COLUMNS,
    atomic_write_text,
    long_rows,
    read_table,
    write_table,
)
from autoseg.evaluation.training_log import RunCost, parse_training_log, run_cost

__all__ = [
    "CACHE_NAME", "CASE_COLUMNS", "LONG_COLUMNS", "RUNS_NAME", "RUNS_TABLE_COLUMNS", "RUN_COLUMNS", "SPLIT_CV",
    "SPLIT_TEST", "TABLE_COLUMNS", "TABLE_NAME", "DatasetInfo", "Evaluation", "Run", "RunCost", "atomic_write_text",
    "compute_case", "dataset_info_from_json", "evaluate", "evaluate_run", "find_runs", "fold_key",
    "load_dataset_info", "long_rows", "method_name", "missing_folds", "parse_run", "parse_training_log",
    "read_json", "read_segmentation", "read_table", "reference_for", "run_cost", "score_cases", "tolerance_for",
    "write_table",
]
