"""``autoseg report``: rankings, tests and figures of every comparison under a results folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from autoseg.cli.evaluate import add_common_arguments, parse_tolerances


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("report", help="write a Markdown + HTML report ranking the losses",
                       description="Evaluate (cached) every run under RESULTS and write report.md, a self-contained "
                                   "report.html and CSV tables into --out: per-loss tables, consensus ranking with "
                                   "bootstrap intervals, Wilcoxon-Holm significance, Friedman/Nemenyi diagrams.")
    add_common_arguments(p)
    p.add_argument("--out", type=Path, required=True, help="folder for the report")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples of the cases (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default 0)")
    p.add_argument("--alpha", type=float, default=0.05, help="significance level (default 0.05)")
    return p


def run(args: argparse.Namespace) -> int:
    from autoseg.cli.main import CliError

    tolerances = parse_tolerances(args.tolerance)
    if not args.results.is_dir():
        raise CliError(f"results folder {args.results} does not exist")
    if args.workers < 1:
        raise CliError(f"--workers must be at least 1, got {args.workers}")
    if args.bootstrap < 1:
        raise CliError(f"--bootstrap must be at least 1, got {args.bootstrap}")
    if not 0 < args.alpha < 1:
        raise CliError(f"--alpha must be in (0, 1), got {args.alpha}")
    from autoseg.evaluation.report import build_report

    res = build_report(args.results, args.out, args.preprocessed, args.raw, tolerances, args.distances,
                       args.bootstrap, args.seed, args.alpha, workers=args.workers)
    if not res.evaluation.rows:
        print("no run could be evaluated; the report lists what was found")
    return 0
