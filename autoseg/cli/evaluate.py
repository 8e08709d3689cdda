"""``autoseg evaluate``: metrics of every run's validation predictions into one tidy CSV."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_common_arguments(p: argparse.ArgumentParser) -> None:
    """Options shared by ``evaluate`` and ``report``."""
    p.add_argument("results", type=Path, help="nnU-Net results folder (or one dataset or trainer folder in it)")
    p.add_argument("--preprocessed", type=Path, default=None,
                   help="nnUNet_preprocessed folder with <dataset>/gt_segmentations (default: $nnUNet_preprocessed, "
                        "then the reference files named in validation/summary.json)")
    p.add_argument("--raw", type=Path, default=None, help="nnUNet_raw folder (default: $nnUNet_raw)")
    p.add_argument("--tolerance", action="append", default=[], metavar="[DATASET=]MM",
                   help="NSD tolerance in mm, for all datasets or one; repeatable (default 2)")
    p.add_argument("--distances", choices=["auto", "always", "never"], default="auto",
                   help="compute HD95 and NSD: auto = for volumes, not for natural images")
    p.add_argument("--workers", type=int, default=1, help="processes computing cases in parallel (default 1)")


def parse_tolerances(values: list[str]) -> dict[str, float]:
    from autoseg.cli.main import CliError

    out: dict[str, float] = {}
    for v in values:
        name, _, number = v.rpartition("=")
        try:
            mm = float(number)
        except ValueError:
            raise CliError(f"--tolerance expects [DATASET=]MM, got {v!r}") from None
        if not mm >= 0:
            raise CliError(f"--tolerance must be >= 0 mm, got {v!r}")
        out[name or "*"] = mm
    return out


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("evaluate", help="compute Dice, IoU, HD95 and NSD of every run's validation predictions",
                       description="Evaluate nnU-Net validation predictions of every (dataset, configuration, "
                                   "loss, budget, fold) under RESULTS into one CSV (one row per case, class and run). "
                                   "Per-case results are cached in each fold folder; reruns compute only what is new.")
    add_common_arguments(p)
    p.add_argument("--out", type=Path, default=None, help="CSV to write (default RESULTS/autoseg_evaluation.csv)")
    return p


def run(args: argparse.Namespace) -> int:
    from autoseg.cli.main import CliError

    tolerances = parse_tolerances(args.tolerance)
    if not args.results.is_dir():
        raise CliError(f"results folder {args.results} does not exist")
    from autoseg.evaluation.collect import evaluate

    if args.workers < 1:
        raise CliError(f"--workers must be at least 1, got {args.workers}")
    ev = evaluate(args.results, args.out, args.preprocessed, args.raw, tolerances, args.distances,
                  workers=args.workers)
    print(f"wrote {len(ev.rows)} row(s) to {ev.table_path}, the long table (task, case, algorithm, value) to "
          f"{ev.long_path} and the run list to {ev.runs_path}")
    return 0
