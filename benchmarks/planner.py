"""Planner cost model against the clock: estimated vs measured seconds per nnU-Net training iteration.

For each plan below, the planner's configuration is written into the plans file of a work folder
holding the preprocessed Hippocampus sample, nnU-Net's trainer (autoseg's ``combo`` trainer) is
built from it, and ``--iterations`` real training iterations (data loading, augmentation in the
training process, forward, backward, SGD step) are timed after one warm-up iteration. The
micro-benchmark runs in the same process just before and just after each measurement, and the
estimate is the mean of the two: on a shared machine the speed drifts by up to 2x within minutes,
and bracketing keeps that drift out of the comparison (the drift is reported per row). The estimate
is the planner's: the cost model with the chosen network's training step timed on this machine
(``autoseg.plans.planner.step_timer``); the model's price alone is printed beside it. Prints a
markdown table and writes JSON.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/planner.py --work-dir /tmp/planwork
    python benchmarks/planner.py --work-dir WORK --dataset Dataset604_CamVid240 --only 7,8,9,10

The work folder must hold a preprocessed dataset (any ``autoseg plan_and_train --work-dir`` run
leaves one, with the 3d_fullres data; plans whose configuration is not preprocessed there are
skipped: 2D plans need ``nnUNetPlans_2d``). The second line times the 2D rows on CamVid converted
by ``bash scripts/study.sh camvid`` (its work folder).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

# (label, base configuration, request keyword arguments)
PLANS = [
    ("3d cnn, nnU-Net's own network", "3d_fullres", {"arch": "cnn", "features": [32]}),
    ("3d cnn, quick-sized (16..128)", "3d_fullres", {"arch": "cnn", "features": [16]}),
    ("3d cnn, 8..64, patch 32x48x32", "3d_fullres", {"arch": "cnn", "features": [8], "patch_size": [32, 48, 32]}),
    ("3d cnn_resenc, 16..128", "3d_fullres", {"arch": "cnn_resenc", "features": [16]}),
    ("3d transformer, feature_size 12", "3d_fullres", {"arch": "transformer", "features": [12]}),
    ("3d transformer, feature_size 24", "3d_fullres", {"arch": "transformer", "features": [24]}),
    ("3d cnn, planned for 20 min", "3d_fullres", {"arch": "cnn", "time_budget_s": 1200}),
    ("2d cnn, nnU-Net's own, batch 32", "2d", {"arch": "cnn", "features": [32], "batch_size": 32}),
    ("2d transformer, feature_size 12, batch 16", "2d", {"arch": "transformer", "features": [12], "batch_size": 16}),
    ("2d cnn, quick-sized (16..)", "2d", {"arch": "cnn", "features": [16]}),
    ("2d transformer, feature_size 12", "2d", {"arch": "transformer", "features": [12]}),
]


def measure(plans: dict, configuration: str, dataset_json: dict, iterations: int) -> list[float]:
    import torch

    from autoseg.trainers.factory import make_trainer_class

    trainer = make_trainer_class("combo")(plans={**plans, "continue_training": False}, configuration=configuration,
                                          fold=0, dataset_json=dataset_json, device=torch.device("cpu"))
    trainer.console_log = False
    trainer.on_train_start()
    trainer.on_train_epoch_start()
    times = []
    for i in range(iterations + 1):
        t0 = time.perf_counter()
        trainer.train_step(next(trainer.dataloader_train))
        if i:  # the first iteration allocates and picks kernels
            times.append(time.perf_counter() - t0)
    trainer.on_train_end()
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work-dir", required=True)
    ap.add_argument("--dataset", default="Dataset990_AutosegHippocampus")
    ap.add_argument("--iterations", type=int, default=4)
    ap.add_argument("--only", default=None, help="comma-separated indices of PLANS to run")
    ap.add_argument("--out", default="planner_results.json", help="JSON of the rows (default: ./planner_results.json)")
    args = ap.parse_args()
    work = Path(args.work_dir)
    os.environ.update(nnUNet_raw=str(work / "nnUNet_raw"), nnUNet_preprocessed=str(work / "nnUNet_preprocessed"),
                      nnUNet_results=str(work / "nnUNet_results_bench"), nnUNet_n_proc_DA="0")
    import numpy as np
    import torch

    from autoseg.plans import planner
    from autoseg.plans.cost import benchmark_machine
    from autoseg.plans.planner import PlanRequest, configuration_entry, plan_configuration, step_timer

    pre = work / "nnUNet_preprocessed" / args.dataset
    plans_file = pre / "nnUNetPlans.json"
    dataset_json = json.loads((work / "nnUNet_raw" / args.dataset / "dataset.json").read_text())
    n_cases = len(json.loads((pre / "dataset_fingerprint.json").read_text())["spacings"])
    in_channels = len(dataset_json.get("channel_names", {"0": 0}))
    n_labels = len([k for k in dataset_json["labels"] if k != "ignore"])
    print(f"{torch.get_num_threads()} thread(s)", flush=True)
    rows = []
    chosen = range(len(PLANS)) if args.only is None else [int(i) for i in args.only.split(",")]
    for i in chosen:
        label, base, kw = PLANS[i]
        plans = json.loads(plans_file.read_text())
        if base not in plans["configurations"] or not (pre / plans["configurations"][base].get(
                "data_identifier", f"nnUNetPlans_{base}")).is_dir():
            print(f"skip {label}: {base} is not preprocessed in {pre}")
            continue
        request = PlanRequest(**kw)
        costs = benchmark_machine("cpu", request.arch)
        # what the planner does: the model's price, and the chosen network's training step timed on this machine
        planner._TIMED.clear()
        plan = plan_configuration(plans, base, request, costs, n_cases, in_channels, n_labels,
                                  timer=step_timer("cpu", in_channels, n_labels))
        name = f"bench{i}_{plan.name}"
        plans["configurations"][name] = configuration_entry(plan, costs, request)
        times = measure(plans, name, dataset_json, args.iterations)
        measured = float(np.median(times))
        after = benchmark_machine("cpu", request.arch)
        # the same plan (same patch, batch, network) priced and timed again with the machine as it was afterwards
        fixed = PlanRequest(arch=plan.arch, patch_size=plan.patch_size, batch_size=plan.batch_size,
                            features=[plan.features_per_stage[0]] if plan.arch == "transformer" else plan.features_per_stage)
        planner._TIMED.clear()
        estimate_after = plan_configuration(plans, base, fixed, after, n_cases, in_channels, n_labels,
                                            timer=step_timer("cpu", in_channels, n_labels))
        estimated = (plan.estimated_seconds_per_iteration + estimate_after.estimated_seconds_per_iteration) / 2
        model = [plan_configuration(plans, base, fixed, c, n_cases, in_channels, n_labels).estimated_seconds_per_iteration
                 for c in (costs, after)]
        row = {"plan": label, "configuration": base, "arch": plan.arch, "patch_size": plan.patch_size,
               "batch_size": plan.batch_size, "features": plan.features_per_stage, "parameters": plan.parameters,
               "estimated_s": round(estimated, 3), "estimated_before_after": [
                   plan.estimated_seconds_per_iteration, estimate_after.estimated_seconds_per_iteration],
               "model_only_s": round(float(np.mean(model)), 3),
               "measured_s": round(measured, 3), "measured_all": [round(t, 3) for t in times],
               "ratio": round(measured / estimated, 2), "ratio_model_only": round(measured / float(np.mean(model)), 2)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("\n| plan | patch | batch | features | params | estimated s/it, network timed (before, after) "
          "| model only | measured s/it | measured/estimated | measured/model only |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['plan']} | {'x'.join(map(str, r['patch_size']))} | {r['batch_size']} | "
              f"{r['features'][0]}..{r['features'][-1]} | {r['parameters'] / 1e6:.2f} M | {r['estimated_s']:.3f} "
              f"({r['estimated_before_after'][0]:.3f}, {r['estimated_before_after'][1]:.3f}) | "
              f"{r['model_only_s']:.3f} | {r['measured_s']:.3f} | {r['ratio']:.2f} | {r['ratio_model_only']:.2f} |")
    for key, what in (("ratio", "network timed"), ("ratio_model_only", "model only")):
        ratios = [r[key] for r in rows]
        within = sum(1 for x in ratios if 1 / 1.25 <= x <= 1.25)
        print(f"{what}: {within}/{len(rows)} within 25 %; geometric mean ratio "
              f"{float(np.exp(np.mean(np.log(ratios)))):.2f}")
    Path(args.out).write_text(json.dumps({"rows": rows, "threads": torch.get_num_threads()}, indent=2))


if __name__ == "__main__":
    main()
