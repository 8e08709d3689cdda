"""``autoseg plan_and_train``: nnU-Net planning, preprocessing, training and validation with one loss."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys

from autoseg.cli.main import CliError

#: the wall clock a run of non-bundled data gets on a CPU when no budget option is given
DEFAULT_CPU_TIME_BUDGET = "30m"


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "plan_and_train", help="plan, preprocess, train and validate a loss with nnU-Net",
        description="Import a dataset (the bundled Hippocampus sample by default), run nnU-Net's fingerprint, "
                    "planning and preprocessing, train the chosen folds with the loss's trainer, validate, and "
                    "print the Dice per class. Finished folds are reused; interrupted ones resume.",
    )
    p.add_argument("--loss", default="combo", help="registered loss or weighted sum, e.g. combo, dice+0.5*topk "
                                                   "(see `autoseg losses`; default: combo)")
    p.add_argument("--loss-args", default=None, metavar="K=V,...",
                   help="hyper-parameters, e.g. alpha=0.7,beta=0.3 (lists as 1;2;3, components as topk.k=20)")
    p.add_argument("--dataset", default=None,
                   help="bundled name (hippocampus), nnU-Net dataset id or DatasetXXX_Name, or a raw dataset "
                        "folder (default: the bundled hippocampus sample)")
    p.add_argument("--config", default="3d_fullres", choices=["2d", "3d_fullres", "3d_lowres"],
                   help="nnU-Net configuration (default: 3d_fullres)")
    p.add_argument("--arch", default="cnn", choices=["cnn", "cnn_resenc", "transformer"],
                   help="network: cnn (nnU-Net's plain U-Net, narrowed by the budget), cnn_resenc (nnU-Net's "
                        "residual-encoder U-Net), transformer (MONAI's SwinUNETR; patch rounded to multiples of 32)")
    p.add_argument("--folds", default="0", help="folds to train: 0, 0-4, 0,2 or all (default: 0)")
    p.add_argument("--seed", type=int, default=0,
                   help="training seed (default 0: nnU-Net's unseeded behaviour); another seed is another run")
    p.add_argument("--jobs", type=int, default=1,
                   help="folds at once, each in its own process with its share of the cores (default 1: one after "
                        "another in this process, as `autoseg benchmark --executor inline`)")
    add_budget_arguments(p)
    add_test_set_argument(p, "the ensemble of the trained folds", "folds in the ensemble")
    p.add_argument("--test-per-fold", action="store_true",
                   help="also predict and score the test set with each trained fold alone")
    p.add_argument("--json", action="store_true", help="print one JSON object (progress goes to stderr)")
    return p


def add_test_set_argument(p: argparse.ArgumentParser, model: str, networks: str) -> None:
    """``--test-set auto|on|off`` of ``plan_and_train`` and ``benchmark`` (the rule: :func:`autoseg.heldout.decide`);
    ``model`` says what predicts, ``networks`` what multiplies the voxels."""
    from autoseg.heldout import AUTO_MAX_VOXELS_CPU, MODES

    p.add_argument("--test-set", default="auto", choices=list(MODES),
                   help=f"after training, predict the dataset's held-out test set (imagesTs) with {model} "
                        "(checkpoint_final.pth) and score it against labelsTs: auto = where it is cheap (a GPU, or "
                        f"on a CPU at most {AUTO_MAX_VOXELS_CPU / 1e6:.0f} M test voxels x {networks}); on; off "
                        "(default: auto)")


def add_budget_arguments(p: argparse.ArgumentParser) -> None:
    """The budget, device and work-folder options ``plan_and_train`` and ``benchmark`` share."""
    g = p.add_argument_group("planned run (instead of --budget): the planner of `autoseg plan` sizes the network")
    g.add_argument("--time-budget", default=None, help="wall clock per run, or for --runs runs: 600, 10m, 1.5h")
    g.add_argument("--runs", type=int, default=1, help="how many runs share --time-budget")
    g.add_argument("--memory", default=None, help="memory a run may use, e.g. 8G")
    g.add_argument("--patch-size", default=None, help="override the planned patch size, e.g. 40x56x40")
    g.add_argument("--batch-size", type=int, default=None, help="override the planned batch size")
    g.add_argument("--min-iterations", type=int, default=None,
                   help="the planner takes the most capable network reaching this many training iterations "
                        "(default: 2000; if none does, the fastest, with at least 500)")
    g.add_argument("--features", default=None, help="override the features per stage (16,32,64,128) or the "
                                                    "first stage's width; the transformer's feature_size")
    p.add_argument("--budget", default=None, choices=["quick", "standard", "smoke"],
                   help="quick: minutes on a CPU, a narrower network and short schedule (default for the bundled "
                        "data); standard: nnU-Net's own plan and schedule (default on a GPU); smoke: seconds, for "
                        "tests. With no budget option, other data on a CPU is planned for --time-budget "
                        f"{DEFAULT_CPU_TIME_BUDGET} per run")
    p.add_argument("--epochs", type=int, default=None, help="override the budget's number of epochs")
    p.add_argument("--iterations", type=int, default=None, help="override the budget's iterations per epoch")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"],
                   help="training device (default: the best available)")
    p.add_argument("--cpu-precision", default=None, choices=["auto", "bf16", "fp32"],
                   help="training precision on a CPU (default auto: bfloat16 autocast where the CPU computes it "
                        "natively, else float32; sets AUTOSEG_CPU_PRECISION; see autoseg/precision.py)")
    p.add_argument("--work-dir", default=None,
                   help="folder for nnUNet_raw, nnUNet_preprocessed, nnUNet_results (default: $AUTOSEG_HOME or "
                        "~/autoseg_work); the nnUNet_* environment variables win when set")
    p.add_argument("--store", default=None, help="result store: one record per run (default: <work>/autoseg_store)")
    p.add_argument("--verify", action=argparse.BooleanOptionalAction, default=None,
                   help="run nnU-Net's dataset integrity check (default: on, except for bundled data)")
    p.add_argument("-np", "--num-processes", type=int, default=None, help="processes for preprocessing")
    p.add_argument("--verbose", action="store_true",
                   help="show nnU-Net's own output (plans, progress bars, per-epoch blocks) here instead of in the "
                        "log file whose path is printed")
    p.add_argument("--limit-cases", type=int, default=None, help=argparse.SUPPRESS)  # tests: a few bundled cases


def apply_cpu_precision(args: argparse.Namespace) -> None:
    """``--cpu-precision`` into the environment, where the trainer, the cost model and worker processes read it."""
    if getattr(args, "cpu_precision", None):
        from autoseg.precision import ENV

        os.environ[ENV] = args.cpu_precision


def resolve_budget(args: argparse.Namespace, datasets: list[str | None]):
    """(preset budget name, PlanRequest or None) from the budget options; CliError on a bad combination."""
    from autoseg.data.bundled import BUNDLED
    from autoseg.pipeline import PipelineError, pick_device

    plan = None
    if any(v is not None for v in (args.time_budget, args.memory, args.patch_size, args.batch_size, args.features,
                                   args.min_iterations)):
        if args.budget is not None:
            raise CliError("--budget is a preset; --time-budget, --memory and the overrides plan the run instead: "
                           "give one or the other")
        from autoseg.plans.planner import (
            MIN_ITERATIONS,
            PlanError,
            PlanRequest,
            parse_duration,
            parse_int_list,
            parse_memory,
        )

        try:
            plan = PlanRequest(
                memory_bytes=parse_memory(args.memory) if args.memory else None,
                time_budget_s=parse_duration(args.time_budget) if args.time_budget else None, runs=args.runs,
                patch_size=parse_int_list(args.patch_size, "--patch-size"), batch_size=args.batch_size,
                features=parse_int_list(args.features, "--features"),
                min_iterations=args.min_iterations or MIN_ITERATIONS)
        except PlanError as e:
            raise CliError(str(e)) from None
    budget = args.budget
    if budget is None and plan is not None:
        budget = "standard"  # not used: the plan sets the schedule
    if budget is None:
        try:
            on_cpu = pick_device(args.device).type == "cpu"
        except PipelineError as e:
            raise CliError(str(e)) from None
        bundled = all(d in (None, *BUNDLED) for d in datasets)
        if on_cpu and not bundled and args.epochs is None and args.iterations is None:
            # nnU-Net's own plan takes hours to days on a CPU (a 25-iteration epoch of a 4-organ MR set did not
            # finish in 5.5 minutes): size the run for the machine instead, and say so before anything starts.
            from autoseg.console import say
            from autoseg.plans.planner import MIN_ITERATIONS, PlanRequest, parse_duration

            plan = PlanRequest(time_budget_s=parse_duration(DEFAULT_CPU_TIME_BUDGET), runs=args.runs,
                               min_iterations=MIN_ITERATIONS)
            say(f"no budget option: on a CPU, data other than the bundled sample is planned for "
                f"{DEFAULT_CPU_TIME_BUDGET} per run (--time-budget to change it, --budget quick|standard for a "
                "preset)", err=True)
            budget = "standard"  # not used: the plan sets the schedule
        else:
            budget = "quick" if on_cpu or bundled else "standard"
    return budget, plan


@contextlib.contextmanager
def _stdout_to_stderr():
    """Send everything written to fd 1, by this process and its children, to stderr."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield os.fdopen(os.dup(saved), "w")
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def run(args: argparse.Namespace) -> int:
    # Before nnU-Net is imported: its final validation otherwise starts 8 export processes.
    os.environ.setdefault("nnUNet_def_n_proc", str(min(os.cpu_count() or 1, 8)))
    from autoseg.cli._args import parse_key_values

    try:
        loss_args = parse_key_values(args.loss_args)
    except ValueError as e:
        raise CliError(f"--loss-args: {e}") from None
    from autoseg.data.bundled import DatasetError
    from autoseg.losses import UnknownLossError
    from autoseg.pipeline import PipelineError, plan_and_train

    if args.jobs < 1:
        raise CliError(f"--jobs must be at least 1, got {args.jobs}")
    apply_cpu_precision(args)
    budget, plan = resolve_budget(args, [args.dataset])
    if plan is not None:
        plan.arch = args.arch

    from autoseg import console

    def log(message: str) -> None:
        console.say(message, err=args.json)

    def call():
        with console.quiet(args.work_dir, "plan_and_train", args.verbose, err=args.json):
            return plan_and_train(
                loss=args.loss, loss_args=loss_args, dataset=args.dataset, configuration=args.config,
                folds=args.folds, budget=budget, epochs=args.epochs, iterations=args.iterations,
                device=args.device, work_dir=args.work_dir, verify=args.verify,
                num_processes=args.num_processes, limit_cases=args.limit_cases, arch=args.arch, plan=plan,
                seed=args.seed, store=args.store, executor="local" if args.jobs > 1 else "inline", jobs=args.jobs,
                test_set=args.test_set, test_per_fold=args.test_per_fold, log=log,
            )

    try:
        if args.json:
            with _stdout_to_stderr() as out:
                result = call()
            out.write(json.dumps(_jsonable(result.as_dict()), indent=2) + "\n")
            out.close()
            return 0
        result = call()
    except (UnknownLossError, DatasetError, PipelineError) as e:
        raise CliError(str(e)) from None
    except ValueError as e:  # bad hyper-parameter values and similar
        raise CliError(str(e)) from None
    _print_summary(result)
    return 0


def _jsonable(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_jsonable(v) for v in obj]
    return obj


def _print_summary(result) -> None:
    d = result.as_dict()
    print()
    print(f"loss {d['loss']}{' ' + json.dumps(d['loss_args']) if d['loss_args'] else ''} on {d['dataset']} "
          f"({d['configuration']}, budget {d['budget']}, folds {', '.join(map(str, d['folds']))}, "
          f"{d['n_validation_cases']} validation cases)")
    if "per_class_iou" in d:
        v = d["validation"]
        print("cross-validation (nnU-Net's validation predictions of the trained folds), IoU per class from one "
              "confusion matrix over all validation images:")
        _print_scores("IoU", v["per_class"], "mIoU", v["mean"], v["absent"])
    else:
        print("cross-validation (nnU-Net's validation summary), Dice per class averaged over cases:")
        _print_scores("Dice", d["per_class_dice"], "mean foreground Dice", d["mean_dice"], [])
    _print_test_set(d.get("test_set"))
    if d["reused_folds"]:
        print(f"  (folds {d['reused_folds']} were finished before and reused)")
    print(f"time: {d['timings_s'].get('total', 0):.0f} s in all, planning and preprocessing "
          f"{d['timings_s'].get('plan_and_preprocess', 0):.0f} s")
    print(f"results: {d['output_dir']}")
    for fold, path in d["fold_dirs"].items():
        print(f"  fold {fold}: {path} (checkpoint_final.pth, validation/summary.json, progress.png, autoseg.json)")
    print("nnU-Net can use these models directly, e.g.: eval \"$(autoseg nnunet-env)\" && nnUNetv2_predict "
          f"-d {d['dataset']} -c {d['configuration']} -tr {d['trainer']} -f {' '.join(map(str, d['folds']))} -i IN -o OUT")


def _print_scores(metric: str, per_class: dict, mean_name: str, mean, absent: list) -> None:
    width = max((len(k) for k in per_class), default=5)
    for name, value in per_class.items():
        shown = "  n/a (in no reference and no prediction)" if value is None or not math.isfinite(value) else f"{value:.4f}"
        print(f"  {metric} {name:<{width}}  {shown}")
    n = len(per_class) - len(absent)
    print(f"  {mean_name} ({n} classes) {'n/a' if mean is None or not math.isfinite(mean) else f'{mean:.4f}'}")


def _print_test_set(t: dict | None) -> None:
    """The held-out test set, printed apart from the cross-validation so that neither is mistaken for the other."""
    if not t:
        return
    if not t["predicted"]:
        print(f"held-out test set: not predicted ({t['reason']})")
        return
    for p in t["predictions"]:
        what = (f"ensemble of folds {', '.join(map(str, p['folds']))}" if p["name"] == "ensemble"
                else f"fold {p['folds'][0]} alone")
        timing = f", {p['mean_seconds_per_case']:.2f} s per case" if p.get("mean_seconds_per_case") else ""
        print(f"held-out test set ({p['n_cases']} cases of imagesTs, {what}, checkpoint_final.pth{timing}): "
              f"{p['folder']}")
        s = p.get("scores")
        if s is None:
            print("  no labelsTs: predicted, not scored")
        elif s["metric"] == "iou":
            _print_scores("IoU", s["per_class"], "mIoU", s["mean"], s["absent"])
        else:
            _print_scores("Dice", s["per_class"], "mean foreground Dice", s["mean"], s["absent"])
