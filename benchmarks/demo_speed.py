"""Benchmark: the demo's wall time and Dice, the code of a git ref ("before") against the working tree ("after"), in one run.

The demo is ``autoseg plan_and_train --loss combo`` on the bundled Hippocampus sample (quick budget,
fold 0, 12 validation cases), each run in a fresh work folder, so preprocessing and the cost
model's micro-benchmark are counted as a new user meets them. "Before" runs the same command with
the ref's code, checked out in a temporary git worktree and put first on ``PYTHONPATH`` (same
virtual environment, same machine, same hour). The runs alternate (after, before, after, ...) so
that a drift of the machine's speed during the benchmark falls on both sides.

Prints each run (wall seconds, seconds in training epochs, seconds per epoch, the training
precision, mean and per-class Dice), then the ratio of the mean wall times and the Dice of each
side over its runs (CPU runs are not bit-reproducible: give at least two per side when the Dice is
what you compare). Takes about 14 + 7 minutes per before/after pair on this project's 2-core
machine; run it with nothing else running.

    python benchmarks/demo_speed.py --before 0b6bf61 --after-runs 2 --before-runs 1
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def demo(work: Path, code: Path, loss: str, extra: list[str]) -> dict:
    """One demo run with the autoseg package found first in ``code``; its result, wall time and epoch times."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("nnUNet_") and k != "AUTOSEG_CPU_PRECISION"}
    env["PYTHONPATH"] = str(code) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", "autoseg", "plan_and_train", "--loss", loss, "--work-dir", str(work),
                           "--test-set", "off", "--json", *extra], capture_output=True, text=True, env=env, cwd=code)
    wall = time.time() - t0
    if proc.returncode != 0:
        sys.exit(f"the demo failed with the code in {code}:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout)
    fold = Path(result["fold_dirs"]["0"])
    epochs = epoch_seconds(fold)
    precision = ""
    record = fold / "autoseg.json"
    if record.is_file():
        precision = json.loads(record.read_text()).get("precision", "") or "fp32 (before the precision field)"
    return {"wall": wall, "train": sum(epochs), "per_epoch": statistics.median(epochs), "dice": result["mean_dice"],
            "per_class": result["per_class_dice"], "precision": precision}


def epoch_seconds(fold: Path) -> list[float]:
    """Seconds of each epoch, from nnU-Net's log of epoch start and end times in the final checkpoint."""
    import torch

    ckpt = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    log = ckpt["logging"]
    return [float(e - s) for s, e in zip(log["epoch_start_timestamps"], log["epoch_end_timestamps"])]


def dice_list(runs: list[dict]) -> str:
    return ", ".join(f"{r['dice']:.4f}" for r in runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", required=True, help="git ref of the code to compare against (e.g. a commit)")
    ap.add_argument("--before-runs", type=int, default=1)
    ap.add_argument("--after-runs", type=int, default=2)
    ap.add_argument("--loss", default="combo")
    ap.add_argument("--keep", action="store_true", help="keep the work folders and the worktree")
    ap.add_argument("extra", nargs="*", help="more plan_and_train options for both sides (after --)")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="autoseg_demo_speed_"))
    before_tree = root / "before_code"
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(before_tree), args.before],
                   check=True, capture_output=True)
    print(f"before: {args.before} ({before_tree}); after: the working tree {REPO}; work folders under {root}",
          flush=True)
    order = []
    for i in range(max(args.before_runs, args.after_runs)):
        if i < args.after_runs:
            order.append("after")
        if i < args.before_runs:
            order.append("before")
    runs: dict[str, list[dict]] = {"before": [], "after": []}
    try:
        for i, side in enumerate(order):
            code = before_tree if side == "before" else REPO
            r = demo(root / f"{i}_{side}", code, args.loss, args.extra)
            runs[side].append(r)
            print(f"{side:6s} run {len(runs[side])}: {r['wall']:.0f} s wall, {r['train']:.0f} s in epochs "
                  f"(median {r['per_epoch']:.2f} s per epoch), {r['precision']}, mean Dice {r['dice']:.4f} "
                  f"({' / '.join(f'{k} {v:.4f}' for k, v in r['per_class'].items())})", flush=True)
    finally:
        if not args.keep:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(before_tree)],
                           capture_output=True)
            shutil.rmtree(root, ignore_errors=True)

    def mean(side: str, key: str) -> float:
        return statistics.mean(r[key] for r in runs[side])

    print()
    print("| side | runs | wall s (mean) | s in epochs (mean) | s per epoch (median) | mean Dice (each run) |")
    print("|---|---|---|---|---|---|")
    for side in ("before", "after"):
        print(f"| {side} | {len(runs[side])} | {mean(side, 'wall'):.0f} | {mean(side, 'train'):.0f} | "
              f"{mean(side, 'per_epoch'):.2f} | {dice_list(runs[side])} |")
    print(f"\nafter / before: wall time {mean('after', 'wall') / mean('before', 'wall'):.2f}x, time in epochs "
          f"{mean('after', 'train') / mean('before', 'train'):.2f}x, mean Dice {mean('after', 'dice'):.4f} against "
          f"{mean('before', 'dice'):.4f} (difference {mean('after', 'dice') - mean('before', 'dice'):+.4f})")


if __name__ == "__main__":
    main()
