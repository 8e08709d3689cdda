"""``autoseg predict-test``: predict and score the held-out test set of already trained configurations."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "predict-test", help="predict and score the held-out test set (imagesTs/labelsTs) of trained runs",
        description="For every trained <trainer>__<plans>__<configuration> folder under RESULTS whose dataset has "
                    "test images, predict imagesTs with nnU-Net's ensemble of the trained folds (checkpoint_final.pth) "
                    "into <folder>/test_predictions/ensemble (and each fold with --per-fold), then score it against "
                    "labelsTs. Cases already predicted by the same checkpoints are kept. `autoseg evaluate` and "
                    "`autoseg report` then show the test-set results apart from the cross-validation.")
    p.add_argument("results", type=Path, help="nnU-Net results folder, one dataset folder or one trainer folder")
    p.add_argument("--raw", type=Path, default=None,
                   help="nnUNet_raw folder holding <dataset>/imagesTs (default: $nnUNet_raw, else the nnUNet_raw "
                        "folder beside the results folder)")
    p.add_argument("--folds", default=None, help="folds to ensemble, e.g. 0-4 or 0,2 (default: every trained "
                                                 "cross-validation fold)")
    p.add_argument("--per-fold", action="store_true", help="also predict with each fold alone")
    p.add_argument("--no-mirroring", action="store_true",
                   help="no test-time mirroring (faster; nnU-Net's validation mirrors, so scores then differ from it)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"], help="default: the best available")
    p.add_argument("--json", action="store_true", help="print one JSON list (progress goes to stderr)")
    return p


def run(args: argparse.Namespace) -> int:
    import sys

    from autoseg.cli.main import CliError
    from autoseg.heldout import HeldOutError, predict_results
    from autoseg.pipeline import PipelineError, parse_folds, pick_device

    if not args.results.is_dir():
        raise CliError(f"results folder {args.results} does not exist")
    try:
        folds = parse_folds(args.folds, n_folds=10**6) if args.folds else None
        device = pick_device(args.device)
    except PipelineError as e:
        raise CliError(str(e)) from None
    log = (lambda s: print(s, file=sys.stderr)) if args.json else print
    try:
        out = predict_results(args.results, args.raw, device, folds=folds, per_fold=args.per_fold,
                              mirroring=not args.no_mirroring, log=log)
    except (HeldOutError, FileNotFoundError) as e:
        raise CliError(str(e)) from None
    if args.json:
        from autoseg.cli.plan_and_train import _jsonable

        print(json.dumps(_jsonable(out), indent=2))
        return 0
    from autoseg.cli.plan_and_train import _print_test_set

    for entry in out:
        print(f"\n{entry['run_dir']}")
        if not entry["predictions"]:
            print(f"  not predicted: {entry.get('reason')}")
            continue
        _print_test_set({"predicted": True, "predictions": entry["predictions"]})
    return 0
