"""Seconds per image of the held-out test-set prediction (nnU-Net's predictor, as ``autoseg predict-test`` runs it) on
real CamVid test images at full size (480 x 360), for nnU-Net's default 2d network and autoseg's ``quick`` network.

    nice -n 10 .venv/bin/python benchmarks/test_set_prediction.py [--images 8] [--threads 2] [--smoke]

Prediction cost does not depend on the weights, so the networks are built from the plans with random weights (no
training needed). An ensemble of k folds runs k networks per image: about k times the single-fold time. Prints one
line per (network, mirroring) with the mean and median seconds per image and the total for the full 233-image
CamVid test set and for the 117 images of the shared subset. ``--smoke`` runs two images, for tests of the script.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

CAMVID = Path(os.environ.get("AUTOSEG_CAMVID", "/work/shared/data/camvid"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=8, help="test images to predict (default 8)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--smoke", action="store_true", help="two images, default network only")
    args = ap.parse_args(argv)
    n_images = 2 if args.smoke else args.images

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="autoseg_bench_pred_"))
    for var, sub in (("nnUNet_raw", "raw"), ("nnUNet_preprocessed", "pre"), ("nnUNet_results", "res")):
        (work / sub).mkdir()
        os.environ[var] = str(work / sub)
    from autoseg.data.convert import convert

    ds = convert("camvid", CAMVID, work / "raw", limit=n_images, progress=None)
    from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprints, plan_experiments

    with contextlib.redirect_stdout(io.StringIO()):
        extract_fingerprints([ds.dataset_id], num_processes=1, check_dataset_integrity=False, clean=False,
                             verbose=False)
        plan_experiments([ds.dataset_id])
    plans_file = work / "pre" / ds.path.name / "nnUNetPlans.json"
    from autoseg.plans.budget import BUDGETS, add_budget_configuration

    configs = ["2d"] if args.smoke else ["2d", add_budget_configuration(plans_file, "2d", BUDGETS["quick"])]
    images = sorted((ds.path / "imagesTs").glob("*_0000.png"))
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads; {len(images)} CamVid test images 480 x 360")
    for config in configs:
        for mirroring in (True, False):
            seconds = _time_config(plans_file, ds.path, config, images, mirroring, work / "out")
            mean, median = statistics.mean(seconds), statistics.median(seconds)
            print(f"{config:<12} mirroring {'on ' if mirroring else 'off'}  mean {mean:6.2f} s/image  median "
                  f"{median:6.2f}  -> 117 images {117 * mean / 60:5.1f} min, 233 images {233 * mean / 60:5.1f} min "
                  "(one fold; an ensemble of k folds: k times)")
    return 0


def _time_config(plans_file: Path, raw_dataset: Path, config: str, images: list[Path], mirroring: bool,
                 out: Path) -> list[float]:
    import json

    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans = PlansManager(json.loads(plans_file.read_text()))
    dataset_json = json.loads((raw_dataset / "dataset.json").read_text())
    cm = plans.get_configuration(config)
    n_in = determine_num_input_channels(plans, cm, dataset_json)
    n_out = plans.get_label_manager(dataset_json).num_segmentation_heads
    net = nnUNetTrainer.build_network_architecture(plans, cm, n_in, n_out, enable_deep_supervision=False)
    with contextlib.redirect_stdout(io.StringIO()):
        pred = nnUNetPredictor(use_mirroring=mirroring, perform_everything_on_device=False,
                               device=torch.device("cpu"), allow_tqdm=False)
        pred.manual_initialization(net, plans, cm, [net.state_dict()], dataset_json, "nnUNetTrainer", (0, 1))
    out.mkdir(parents=True, exist_ok=True)
    seconds = []
    for img in images:
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            pred.predict_from_files_sequential([[str(img)]], [str(out / img.name.replace("_0000.png", ""))],
                                               save_probabilities=False, overwrite=True)
        seconds.append(time.perf_counter() - t0)
    return seconds


if __name__ == "__main__":
    sys.exit(main())
