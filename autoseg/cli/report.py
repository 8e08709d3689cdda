"""``autoseg report``: rankings, tests and figures of every comparison under a results folder."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from autoseg.cli.evaluate import add_common_arguments, parse_tolerances


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("report", help="write a Markdown + HTML report ranking the losses",
                       description="Evaluate (cached) every run under RESULTS and write report.md, a self-contained "
                                   "report.html and CSV tables into --out: the headline ranking (mean foreground "
                                   "Dice for medical data, dataset-level mIoU for natural images) with bootstrap "
                                   "intervals, per-fold and per-class tables, paired differences against a baseline, "
                                   "paired tests, Friedman/Iman-Davenport, run costs, held-out test-set results.")
    add_common_arguments(p)
    p.add_argument("--out", type=Path, required=True, help="folder for the report")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples of the cases (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default 0)")
    p.add_argument("--alpha", type=float, default=0.05, help="significance level (default 0.05)")
    p.add_argument("--baseline", default="dice_ce",
                   help="loss the others are compared with in the paired-differences table (default dice_ce; a "
                        "group without it is compared with its headline's first loss, and the report says so)")
    p.add_argument("--json", action="store_true",
                   help="print the headline ranking of every group as one JSON object (progress goes to stderr)")
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

    say = (lambda m: print(m, file=sys.stderr, flush=True)) if args.json else print
    res = build_report(args.results, args.out, args.preprocessed, args.raw, tolerances, args.distances,
                       args.bootstrap, args.seed, args.alpha, progress=say, workers=args.workers,
                       baseline=args.baseline)
    if not res.evaluation.rows:
        say("no run could be evaluated; the report lists what was found")
    if args.json:
        sys.stdout.write(json.dumps({**res.verdict(), "report": str(res.html), "markdown": str(res.markdown)},
                                    indent=2) + "\n")
    return 0
