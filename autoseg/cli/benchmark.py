"""``autoseg benchmark``: a grid of datasets x configurations x architectures x losses x folds x seeds, and its status."""

from __future__ import annotations

import argparse
import json
import os

from autoseg.cli.main import CliError
from autoseg.cli.plan_and_train import (
    _jsonable,
    _stdout_to_stderr,
    add_budget_arguments,
    add_test_set_argument,
    apply_cpu_precision,
    resolve_budget,
)


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "benchmark", help="run a grid of losses x folds x seeds (and datasets, configurations, architectures)",
        description="Prepare each dataset and configuration once, expand the grid into runs (one record each in the "
                    "result store), and run what is not done through an executor. Rerunning the same command skips "
                    "finished runs, resumes interrupted ones from nnU-Net's checkpoints and retries failed ones only "
                    "with --retry-failed. `autoseg benchmark status` shows where the grid stands. See docs/grids.md.")
    p.add_argument("action", nargs="?", default="run", choices=["run", "status"],
                   help="run (default) the grid, or show the status of the store")
    p.add_argument("--dataset", action="append", default=None,
                   help="dataset(s) as for plan_and_train; repeatable or comma-separated (default: the bundled sample)")
    p.add_argument("--config", default="3d_fullres", help="nnU-Net configuration(s), comma-separated (default 3d_fullres)")
    p.add_argument("--arch", default="cnn", help="architecture(s), comma-separated: cnn, cnn_resenc, transformer")
    p.add_argument("--loss", action="append", default=None,
                   help="loss(es): a name, a comma list, a category (pixel, region, combination; category=boundary "
                        "for the boundary losses, boundary alone being the loss), all, or "
                        "a sweep such as tversky:alpha=0.3,0.5,0.7 (several keys: loss:a=1,2:b=3); repeatable")
    p.add_argument("--folds", default="0", help="folds: 0, 0-4, 0,2 or all (default: 0)")
    p.add_argument("--seeds", default="0", help="training seeds: 0, 0-2, 0,3 (default 0: nnU-Net unseeded)")
    add_budget_arguments(p)
    add_test_set_argument(p, "each run's own model (its fold and seed; the scores go to its record)", "one network")
    p.add_argument("--executor", default="local",
                   help="how runs are run: local (default), inline (in this process), submitit_local, slurm ...")
    p.add_argument("--jobs", type=int, default=1,
                   help="runs at once (local: each gets cores/JOBS threads and, with GPUs, one GPU)")
    p.add_argument("--executor-option", action="append", default=[], metavar="K=V",
                   help="an option of the executor (e.g. timeout_min=60, partition=gpu); repeatable")
    p.add_argument("--retry-failed", action="store_true", help="run failed runs again")
    p.add_argument("--dry-run", action="store_true",
                   help="print the grid and its estimated cost (nnU-Net's plans and the cost model); train nothing")
    p.add_argument("--json", action="store_true", help="print one JSON object with a runs list (progress to stderr)")
    return p


def _split(values: list[str] | None) -> list[str]:
    return [v.strip() for item in values or [] for v in item.split(",") if v.strip()]


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("nnUNet_def_n_proc", str(min(os.cpu_count() or 1, 8)))
    if args.action == "status":
        return _status(args)
    apply_cpu_precision(args)
    from autoseg import console

    def log(message: str) -> None:
        console.say(message, err=args.json)

    def call() -> dict:
        with console.quiet(args.work_dir, "benchmark", args.verbose, err=args.json):
            return _run(args, log)

    if args.json:
        with _stdout_to_stderr() as out:
            payload = call()
        out.write(json.dumps(_jsonable(payload), indent=2, default=str) + "\n")
        out.close()
    else:
        payload = call()
    return 1 if payload.get("summary", {}).get("counts", {}).get("failed") and not args.dry_run else 0


def _run(args: argparse.Namespace, log) -> dict:
    from autoseg.cli._args import parse_key_values
    from autoseg.data.bundled import DatasetError
    from autoseg.grid.executors import list_executors
    from autoseg.grid.runner import GridRequest, build_grid, run_records
    from autoseg.grid.spec import GridError, expand_losses, parse_seeds
    from autoseg.grid.status import format_status, run_row, summarize
    from autoseg.losses import UnknownLossError
    from autoseg.pipeline import PipelineError, pick_device
    from autoseg.plans.architectures import check_architecture
    from autoseg.plans.budget import BUDGETS

    if args.executor not in list_executors():
        raise CliError(f"unknown executor {args.executor!r}; available: {', '.join(list_executors())}")
    if args.jobs < 1:
        raise CliError(f"--jobs must be at least 1, got {args.jobs}")
    try:
        options = parse_key_values(",".join(args.executor_option))
        losses = expand_losses(args.loss or ["combo"])
        seeds = parse_seeds(args.seeds)
        archs = _split([args.arch])
        for a in archs:
            check_architecture(a)
        datasets: list[str | None] = _split(args.dataset) or [None]
        budget_name, plan = resolve_budget(args, datasets)
        device = pick_device(args.device).type
        budget = None if plan is not None else BUDGETS[budget_name].with_schedule(args.epochs, args.iterations)
        if plan is not None and (args.epochs is not None or args.iterations is not None):
            raise CliError("--epochs/--iterations set the schedule of a preset budget; a planned grid's schedule "
                           "comes from the planner")
        from autoseg.prepare import parse_folds

        parse_folds(args.folds, 10**6)
        request = GridRequest(datasets=datasets, configurations=_split([args.config]), architectures=archs,
                              losses=losses, folds=args.folds, seeds=seeds, budget=budget, plan=plan, device=device,
                              work_dir=args.work_dir, store=args.store, verify=args.verify,
                              num_processes=args.num_processes, limit_cases=args.limit_cases)
        grid = build_grid(request, dry_run=args.dry_run, log=log)
    except (UnknownLossError, DatasetError, PipelineError, GridError) as e:
        raise CliError(str(e)) from None
    except ValueError as e:
        raise CliError(str(e)) from None
    if args.dry_run:
        states = [grid.state(r) for r in grid.runs]
        total = 0.0
        known = True
        for r, s in zip(grid.runs, states):
            est = grid.estimates.get(f"{r.dataset}/{r.configuration}")
            if s != "done":
                if est is None:
                    known = False
                else:
                    total += est
        rows = [run_row(r, s, str(grid.dirs.results)) for r, s in zip(grid.runs, states)]
        for row in rows:
            est = grid.estimates.get(f"{row['dataset']}/{row['configuration']}")
            row["estimated_seconds"] = None if est is None else round(est, 1)
        wall = total / args.jobs if known else None
        if not args.json:
            log(format_status(grid.runs, states, args.jobs))
            for key, est in grid.estimates.items():
                log(f"estimate {key}: {'unknown' if est is None else f'{est:.0f} s'} per run (cost model)")
            log(f"{len(grid.runs)} run(s), {sum(s != 'done' for s in states)} to do: estimated "
                  + (f"{total:.0f} s of runs, about {wall:.0f} s at {args.jobs} at once" if known else "cost unknown")
                  + " (dry run: nothing trained)")
        return {"runs": rows, "summary": summarize(grid.runs, states, args.jobs), "dry_run": True,
                "estimated_seconds": None if not known else round(total, 1),
                "estimated_wall_seconds": None if wall is None else round(wall, 1), "store": str(grid.store.root)}
    outcome = run_records(grid.runs, grid.dirs, grid.store, device, executor=args.executor, jobs=args.jobs,
                          retry_failed=args.retry_failed, executor_options=options, log=log,
                          test_set=args.test_set)
    runs = [outcome.final.get(r.run_id, r) for r in grid.runs]
    states = [grid.state(r) for r in runs]
    if not args.json:
        log(format_status(runs, states, args.jobs))
        log(f"store: {grid.store.root}")
    return {"runs": [run_row(r, s, str(grid.dirs.results)) for r, s in zip(runs, states)],
            "summary": summarize(runs, states, args.jobs), "store": str(grid.store.root),
            "skipped_done": len(outcome.skipped_done), "submitted": len(outcome.submitted),
            "elsewhere": len(outcome.elsewhere)}


def _status(args: argparse.Namespace) -> int:
    from autoseg.grid.runner import default_store
    from autoseg.grid.status import format_status, run_row, store_status, summarize
    from autoseg.grid.store import Store
    from autoseg.paths import resolve_work_dirs

    store = Store(args.store or default_store(resolve_work_dirs(args.work_dir)))
    if not store.root.is_dir():
        raise CliError(f"no result store at {store.root} (give --store or --work-dir)")
    records, states = store_status(store)
    if args.json:
        print(json.dumps(_jsonable({"runs": [run_row(r, s) for r, s in zip(records, states)],
                                    "summary": summarize(records, states, args.jobs), "store": str(store.root)}),
                         indent=2, default=str))
    else:
        print(f"store {store.root}: {len(records)} run(s)")
        print(format_status(records, states, args.jobs))
    return 0
