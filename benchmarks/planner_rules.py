"""Which planner rule trains best in a fixed time: validation Dice of ``--time-budget`` runs under each rule.

The planner takes the most capable candidate (patch, width, depth, batch) that reaches an iteration floor
(``--min-iterations``) in the budget. This benchmark trains ``autoseg plan_and_train --loss dice_ce
--time-budget B --min-iterations F`` for every (data set, budget, floor) and records the plan, the wall
time and the validation Dice, so the default floor is chosen on measurements rather than on Hippocampus
alone (issue 12). Data sets:

- ``hippocampus``: the bundled MSD Hippocampus sample (60 cases, 1 mm isotropic), fold 0;
- ``hippocampus_thick``: the same cases with their last axis thickened 5x (each 5 slices averaged into
  one 5 mm slice, the label of the middle slice kept), standing in for a thick-slice MR or CT series;
- ``camvid``: CamVid at 240 x 180 (``../shared/data/camvid``), 2D, SegNet's train split, validated on
  SegNet's val split (the converter's fold 5).

Results go to a JSON file (``--results``), one entry per run, written atomically after each run; a rerun
skips what is there, so the table can be filled over several sittings. Runs are trained with
``--threads`` torch threads (1 by default, so that two copies of this script, or this script and
another 1-thread job, share a 2-core machine evenly; ``--only`` splits the work between copies).

    python benchmarks/planner_rules.py --work-dir WORK --results docs/planning_rules.json
    python benchmarks/planner_rules.py --work-dir WORK --results R.json --only hippocampus:600:500
    python benchmarks/planner_rules.py --results docs/planning_rules.json --table   # print the table only
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

DATASETS = ("hippocampus", "hippocampus_thick", "camvid")
THICK_ID, THICK_NAME = 992, "HippocampusThick5"
CAMVID_ID, CAMVID_NAME = 605, "CamVid240"


def make_thick_slices(src: Path, dst: Path, factor: int = 5) -> Path:
    """An nnU-Net raw dataset at ``dst`` from the one at ``src`` with each case's last axis thickened ``factor``x.

    Images: the mean of each run of ``factor`` slices (a thick slice integrates its volume); labels: the label
    of the run's middle slice. Slices left over at the end are dropped; the spacing of that axis is multiplied
    by ``factor`` and the origin moved to the first thick slice's centre. Idempotent.
    """
    import numpy as np
    import SimpleITK as sitk

    from autoseg.io import atomic_write_json

    if (dst / "dataset.json").is_file():
        return dst
    dj = json.loads((src / "dataset.json").read_text())
    ending = dj.get("file_ending", ".nii.gz")
    tmp = dst.with_name(dst.name + ".partial")
    for sub in ("imagesTr", "labelsTr"):
        (tmp / sub).mkdir(parents=True, exist_ok=True)
    for label_path in sorted((src / "labelsTr").glob(f"*{ending}")):
        case = label_path.name[: -len(ending)]
        pairs = [(label_path, tmp / "labelsTr" / label_path.name, "label")]
        pairs += [(p, tmp / "imagesTr" / p.name, "image") for p in sorted((src / "imagesTr").glob(f"{case}_*{ending}"))]
        for path, out, kind in pairs:
            img = sitk.ReadImage(str(path))
            arr = sitk.GetArrayFromImage(img)  # [z, y, x]: z is SimpleITK's last axis
            n = arr.shape[0] // factor
            if n < 1:
                raise ValueError(f"{path.name}: {arr.shape[0]} slices, fewer than the factor {factor}")
            groups = arr[: n * factor].reshape(n, factor, *arr.shape[1:])
            thick = groups.astype(np.float32).mean(1) if kind == "image" else groups[:, factor // 2]
            new = sitk.GetImageFromArray(thick.astype(np.float32) if kind == "image" else thick.astype(np.uint8))
            sx, sy, sz = img.GetSpacing()
            new.SetSpacing((sx, sy, sz * factor))
            new.SetDirection(img.GetDirection())
            shift = (factor - 1) / 2 * sz
            direction = np.array(img.GetDirection()).reshape(3, 3)
            new.SetOrigin(tuple(np.array(img.GetOrigin()) + direction[:, 2] * shift))
            sitk.WriteImage(new, str(out))
    dj["name"] = f"Dataset{THICK_ID}_{THICK_NAME}"
    dj["description"] = (f"{dj.get('description', src.name)}; last axis thickened {factor}x by "
                         "benchmarks/planner_rules.py (mean image, middle-slice label)")
    atomic_write_json(tmp / "dataset.json", dj)
    tmp.rename(dst)
    return dst


def prepare(dataset: str, work: Path, env: dict) -> tuple[str, list[str]]:
    """The ``--dataset`` value and extra plan_and_train arguments of ``dataset``, creating its raw data."""
    if dataset == "hippocampus":
        return "hippocampus", ["--folds", "0"]
    raw = work / dataset / "nnUNet_raw"
    if dataset == "hippocampus_thick":
        from autoseg.data.bundled import import_bundled

        src = import_bundled("hippocampus", raw, progress=lambda *_: None).raw_dir
        dst = make_thick_slices(Path(src), raw / f"Dataset{THICK_ID}_{THICK_NAME}")
        return str(dst), ["--folds", "0"]
    if dataset == "camvid":
        dst = raw / f"Dataset{CAMVID_ID}_{CAMVID_NAME}"
        if not (dst / "dataset.json").is_file():
            source = os.environ.get("CAMVID_SOURCE", str(Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
                                                       / "camvid"))
            subprocess.run([sys.executable, "-m", "autoseg", "convert", "camvid", "--source", source, "--size",
                            "240x180", "--dataset-id", str(CAMVID_ID), "--name", CAMVID_NAME, "--out", str(raw),
                            "--quiet"], check=True, env=env)
        return str(dst), ["--folds", "5", "--config", "2d"]
    raise SystemExit(f"unknown data set {dataset!r}; known: {', '.join(DATASETS)}")


def key(dataset: str, budget_s: int, floor: int) -> str:
    return f"{dataset}:{budget_s}:{floor}"


def run_one(dataset: str, budget_s: int, floor: int, work: Path, threads: int) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("nnUNet_")}
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    ds, extra = prepare(dataset, work, env)
    folder = work / dataset / f"t{budget_s}_f{floor}"
    cmd = [sys.executable, "-m", "autoseg", "plan_and_train", "--dataset", ds, "--loss", "dice_ce",
           "--time-budget", f"{budget_s}s", "--min-iterations", str(floor), "--work-dir", str(folder),
           "--test-set", "off", "--json", *extra]
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.time() - t0
    entry = {"dataset": dataset, "budget_s": budget_s, "min_iterations": floor, "threads": threads,
             "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), "wall_s": round(wall, 1), "command": " ".join(cmd[1:])}
    if proc.returncode != 0:
        entry["error"] = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"
        return entry
    result = json.loads(proc.stdout)
    plan = result.get("plan") or {}
    estimate = plan.get("estimate") or {}
    debug = {}
    for fold_dir in (result.get("fold_dirs") or {}).values():
        path = Path(fold_dir) / "debug.json"  # nnU-Net's record of the trainer's settings
        if path.is_file():
            debug = json.loads(path.read_text())
    headline = result.get("headline") or {}
    entry.update(metric=headline.get("metric"), score=headline.get("value"),
                 per_class=result.get("per_class_dice") or result.get("per_class_iou"),
                 patch_size=plan.get("patch_size"), batch_size=plan.get("batch_size"),
                 features=plan.get("features_per_stage"), epochs=_int(debug.get("num_epochs")),
                 iterations_per_epoch=_int(debug.get("num_iterations_per_epoch")),
                 estimated_s_per_iteration=estimate.get("seconds_per_iteration"),
                 estimated_s_per_run=estimate.get("seconds_per_run"), reasons=plan.get("reasons"))
    return entry


def _int(x) -> int | None:
    try:
        return int(x)
    except (TypeError, ValueError):
        return None


def table(results: dict) -> str:
    rows = ["| data set | budget | iteration floor | plan (patch, batch, features) | iterations | wall | score |",
            "|---|---|---|---|---|---|---|"]
    for e in sorted(results.values(), key=lambda e: (DATASETS.index(e["dataset"]), e["budget_s"], e["min_iterations"])):
        if "error" in e:
            rows.append(f"| {e['dataset']} | {e['budget_s'] / 60:.0f} min | {e['min_iterations']} | failed: "
                        f"{e['error'][:80]} | | {e['wall_s']:.0f} s | |")
            continue
        its = (e.get("epochs") or 0) * (e.get("iterations_per_epoch") or 0)
        feats = e.get("features") or []
        rows.append(f"| {e['dataset']} | {e['budget_s'] / 60:.0f} min | {e['min_iterations']} | "
                    f"{'x'.join(map(str, e.get('patch_size') or []))}, {e.get('batch_size')}, "
                    f"{feats[0] if feats else '?'}..{feats[-1] if feats else '?'} ({len(feats)} stages) | {its} | "
                    f"{e['wall_s']:.0f} s | {e['score']:.3f} ({e['metric']}) |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work-dir", help="folder for the runs' work folders (kept: reruns reuse preprocessing)")
    ap.add_argument("--results", required=True, help="JSON file of the results (created, then extended)")
    ap.add_argument("--datasets", default=",".join(DATASETS))
    ap.add_argument("--budgets", default="600,1800", help="seconds per run, comma-separated")
    ap.add_argument("--floors", default="500,2000", help="iteration floors (--min-iterations), comma-separated")
    ap.add_argument("--only", default=None, help="comma-separated dataset:budget:floor keys to run")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--table", action="store_true", help="print the table of the results file and stop")
    args = ap.parse_args()
    from autoseg.io import read_json, update_json

    results_path = Path(args.results)
    if args.table:
        print(table(read_json(results_path) or {}))
        return
    if not args.work_dir:
        ap.error("--work-dir is required to run")
    work = Path(args.work_dir)
    todo = [(d, int(b), int(f)) for d in args.datasets.split(",") for b in args.budgets.split(",")
            for f in args.floors.split(",")]
    if args.only:
        wanted = set(args.only.split(","))
        todo = [t for t in todo if key(*t) in wanted]
    for i, (d, b, f) in enumerate(todo, 1):
        if key(d, b, f) in (read_json(results_path) or {}):
            print(f"[{i}/{len(todo)}] {key(d, b, f)}: done before, skipped", flush=True)
            continue
        print(f"[{i}/{len(todo)}] {key(d, b, f)}: training (about {b / 60:.0f} min) ...", flush=True)
        entry = run_one(d, b, f, work, args.threads)
        update_json(results_path, lambda r, k=key(d, b, f), e=entry: {**(r or {}), k: e}, indent=2)
        print(f"    {entry.get('score', entry.get('error'))} in {entry['wall_s']:.0f} s", flush=True)
    print(table(read_json(results_path) or {}))


if __name__ == "__main__":
    main()
