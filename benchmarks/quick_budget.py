"""Benchmark: the ``quick`` budget against nnU-Net's own plan given the same training time, on this machine.

Runs ``autoseg plan_and_train`` (fold 0, bundled Hippocampus) twice in fresh work folders:

1. ``--budget quick`` (the demo: narrowed network, its preset epochs x 25 iterations);
2. nnU-Net's default ``3d_fullres`` plan and network (``--budget standard``) with the epochs cut
   so that its training takes as long as the quick run's did (its seconds per iteration are
   measured first, in this run), with a complete learning-rate schedule.

Prints wall time, training time and validation Dice of both, and the ratios. Not a test: it
takes about 25 minutes on 2 cores. ``python benchmarks/quick_budget.py [--loss combo]``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(work: Path, loss: str, *extra: str) -> tuple[dict, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("nnUNet_")}
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", "autoseg", "plan_and_train", "--loss", loss, "--work-dir", str(work),
                           "--json", *extra], capture_output=True, text=True, env=env)
    wall = time.time() - t0
    if proc.returncode != 0:
        sys.exit(f"run failed: {' '.join(extra)}\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout), wall


def training_seconds(result: dict) -> float:
    """Seconds spent in training epochs, from nnU-Net's log of epoch start and end times."""
    import torch

    fold = Path(result["fold_dirs"]["0"])
    ckpt = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    log = ckpt["logging"]
    return float(sum(e - s for s, e in zip(log["epoch_start_timestamps"], log["epoch_end_timestamps"])))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--loss", default="combo")
    ap.add_argument("--keep", action="store_true", help="keep the work folders")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="autoseg_bench_"))
    print(f"work folders under {root}", flush=True)

    quick, quick_wall = run(root / "quick", args.loss)
    quick_train = training_seconds(quick)
    print(f"quick: {quick_wall:.0f} s wall, {quick_train:.0f} s training, mean Dice {quick['mean_dice']:.4f}", flush=True)

    probe, _ = run(root / "probe", args.loss, "--budget", "standard", "--epochs", "1", "--iterations", "20")
    s_per_epoch_iter = training_seconds(probe) / 20
    iters = 25
    epochs = max(1, round(quick_train / (s_per_epoch_iter * iters)))
    print(f"nnU-Net default plan: {s_per_epoch_iter:.2f} s per iteration (with its validation steps) -> "
          f"{epochs} epochs x {iters} iterations for the same training time", flush=True)
    std, std_wall = run(root / "standard", args.loss, "--budget", "standard", "--epochs", str(epochs),
                        "--iterations", str(iters))
    std_train = training_seconds(std)

    print()
    print(f"| plan (loss {args.loss}, fold 0, 12 validation cases) | wall s | training s | iterations | "
          "Dice anterior | Dice posterior | mean Dice |")
    print("|---|---|---|---|---|---|---|")
    from autoseg.plans.budget import BUDGETS

    q = BUDGETS["quick"]
    for name, r, wall, train, n in (("autoseg quick budget", quick, quick_wall, quick_train,
                                     q.epochs * q.iterations_per_epoch),
                                    ("nnU-Net default 3d_fullres, same training time", std, std_wall, std_train,
                                     epochs * iters)):
        pc = r["per_class_dice"]
        print(f"| {name} | {wall:.0f} | {train:.0f} | {n} | {pc['anterior']:.4f} | {pc['posterior']:.4f} | "
              f"{r['mean_dice']:.4f} |")
    print(f"\nratio quick / default plan: mean Dice {quick['mean_dice'] / max(std['mean_dice'], 1e-9):.2f}x, "
          f"training time {quick_train / std_train:.2f}x, wall time {quick_wall / std_wall:.2f}x")
    if not args.keep:
        import shutil

        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
