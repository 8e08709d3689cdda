"""``autoseg plan``: nnU-Net's fingerprint and plans, then a budget-aware plan a person can read (or JSON)."""

from __future__ import annotations

import argparse
import json

from autoseg.cli.main import CliError


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "plan", help="plan patch, batch and network for a time and memory budget on this machine",
        description="Run nnU-Net's fingerprint extraction and experiment planning, measure this machine "
                    "(convolution, matmul and augmentation speed, a few seconds, cached in the work folder), "
                    "and choose patch size, batch size, network width and depth so that training fits the budget. "
                    "The plan is added to nnU-Net's plans file as <config>_<arch>_plan.",
    )
    p.add_argument("--dataset", default=None, help="as for plan_and_train (default: the bundled hippocampus sample)")
    p.add_argument("--config", default="3d_fullres", help="nnU-Net configuration(s) to plan, comma-separated: "
                                                          "2d, 3d_fullres, 3d_lowres (default: 3d_fullres)")
    p.add_argument("--arch", default="cnn", choices=["cnn", "cnn_resenc", "transformer"],
                   help="cnn: nnU-Net's plain U-Net; cnn_resenc: its residual-encoder U-Net; transformer: "
                        "MONAI's SwinUNETR (default: cnn)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="device to plan for (default: cpu)")
    p.add_argument("--memory", default=None,
                   help="memory a run may use, e.g. 8G (default: 90%% of the GPU, or half the RAM)")
    p.add_argument("--time-budget", default=None,
                   help="wall clock for one run, or for --runs runs together: 600, 10m, 1.5h (default: none, "
                        "nnU-Net's schedule)")
    p.add_argument("--runs", type=int, default=1, help="how many runs share --time-budget (a grid of losses x folds)")
    p.add_argument("--patch-size", default=None, help="override the patch size, e.g. 40x56x40")
    p.add_argument("--batch-size", type=int, default=None, help="override the batch size")
    p.add_argument("--features", default=None,
                   help="override the features per stage (16,32,64,128) or the first stage's width (16); "
                        "for the transformer, SwinUNETR's feature_size (12, 24, 48)")
    p.add_argument("--min-iterations", type=int, default=None,
                   help="the planner takes the most capable network that reaches this many training iterations in "
                        "the time budget (default: 2000; if none does, the fastest, with at least 500)")
    p.add_argument("--work-dir", default=None, help="as for plan_and_train")
    p.add_argument("--verify", action=argparse.BooleanOptionalAction, default=None,
                   help="run nnU-Net's dataset integrity check (default: on, except for bundled data)")
    p.add_argument("--refresh-benchmark", action="store_true", help="measure this machine again")
    p.add_argument("--dry-run", action="store_true", help="print the plan without writing the plans file")
    p.add_argument("-np", "--num-processes", type=int, default=None, help="processes for the fingerprint")
    p.add_argument("--limit-cases", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true", help="print one JSON object (progress goes to stderr)")
    p.add_argument("--verbose", action="store_true",
                   help="show nnU-Net's own output here instead of in the log file whose path is printed")
    return p


def run(args: argparse.Namespace) -> int:

    from autoseg.plans.planner import (
        MIN_ITERATIONS,
        PlanError,
        PlanRequest,
        parse_duration,
        parse_int_list,
        parse_memory,
    )

    try:
        request = PlanRequest(
            arch=args.arch, device=args.device,
            memory_bytes=parse_memory(args.memory) if args.memory else None,
            time_budget_s=parse_duration(args.time_budget) if args.time_budget else None,
            runs=args.runs, patch_size=parse_int_list(args.patch_size, "--patch-size"),
            batch_size=args.batch_size, features=parse_int_list(args.features, "--features"),
            min_iterations=args.min_iterations or MIN_ITERATIONS,
        )
        if request.runs < 1:
            raise PlanError(f"--runs must be at least 1, got {request.runs}")
        if request.batch_size is not None and request.batch_size < 1:
            raise PlanError(f"--batch-size must be at least 1, got {request.batch_size}")
    except PlanError as e:
        raise CliError(str(e)) from None
    configs = [c.strip() for c in args.config.split(",") if c.strip()]
    from autoseg import console
    from autoseg.cli.plan_and_train import _stdout_to_stderr
    from autoseg.data.bundled import DatasetError
    from autoseg.plans.api import format_plan, plan_dataset

    def log(message: str) -> None:
        console.say(message, err=args.json)

    def call():
        with console.quiet(args.work_dir, "plan", args.verbose, err=args.json):
            return plan_dataset(args.dataset, configs, request, work_dir=args.work_dir, verify=args.verify,
                                num_processes=args.num_processes, limit_cases=args.limit_cases,
                                refresh_benchmark=args.refresh_benchmark, write=not args.dry_run, log=log)

    try:
        if args.json:
            # nnU-Net's planner prints to stdout: keep stdout for the one JSON object
            with _stdout_to_stderr() as out:
                summary = call()
        else:
            summary = call()
    except (DatasetError, ValueError) as e:
        raise CliError(str(e)) from None
    if args.dry_run:
        summary["plans_file"] += " (not written: --dry-run)"
    if args.json:
        out.write(json.dumps(summary, indent=2, default=str) + "\n")
        out.close()
    else:
        print(format_plan(summary))
    return 0
