"""Time to evaluate one fold of 3D volumes (HD95 + NSD per case and class): autoseg's metrics (MONAI, cropped to
the structures) against a plain scipy implementation (full-volume Euclidean distance transforms), in the same run.

    nice -n 10 .venv/bin/python benchmarks/evaluation.py [--cases 4] [--shape 64 160 160] [--repeats 1]

Prints one line per case, then the totals and the ratios baseline / autoseg (above 1: autoseg is faster).
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
from scipy import ndimage


def synthetic_case(shape, spacing, rng, n_labels=3):
    """Reference: ellipsoids of random size and place (in mm); prediction: the reference warped by a smooth random
    displacement and sprinkled with a few false-positive blobs, as a real network's errors look."""
    grid = np.indices(shape).astype(np.float32)
    ref = np.zeros(shape, np.uint8)
    pred = np.zeros(shape, np.uint8)
    for label in range(1, n_labels + 1):
        extent = np.array(shape) * np.array(spacing)
        centre = rng.uniform(0.3, 0.7, 3) * extent
        radii = rng.uniform(0.1, 0.3, 3) * extent.min() * np.array([1.0, 1.3, 1.0])
        wobble = rng.normal(1.0, 0.06, 3)

        def mask(c, r):
            return sum(((grid[i] * spacing[i] - c[i]) / r[i]) ** 2 for i in range(3)) <= 1.0

        ref[mask(centre, radii)] = label
        pred[mask(centre + rng.normal(0, 1.5, 3), radii * wobble)] = label
        spot = tuple(int(rng.integers(0, n)) for n in shape)
        pred[tuple(slice(max(s - 2, 0), s + 2) for s in spot)] = label
    return pred, ref


def scipy_baseline(pred, ref, labels, spacing, tolerance_mm):
    """HD95 (max of directed 95th percentiles of boundary-voxel distances) and a boundary-voxel NSD, by EDT."""
    out = []
    for label in labels:
        p, r = pred == label, ref == label
        if not p.any() or not r.any():
            out.append((np.nan, np.nan))
            continue
        bp = p & ~ndimage.binary_erosion(p)
        br = r & ~ndimage.binary_erosion(r)
        d_pr = ndimage.distance_transform_edt(~br, sampling=spacing)[bp]
        d_rp = ndimage.distance_transform_edt(~bp, sampling=spacing)[br]
        hd95 = max(np.percentile(d_pr, 95), np.percentile(d_rp, 95))
        nsd = ((d_pr <= tolerance_mm).sum() + (d_rp <= tolerance_mm).sum()) / (d_pr.size + d_rp.size)
        out.append((hd95, nsd))
    return out


def monai_uncropped(pred, ref, labels, spacing, tolerance_mm):
    """MONAI on the whole volume (what autoseg would do without cropping first)."""
    import torch
    from monai.metrics import compute_hausdorff_distance, compute_surface_dice

    out = []
    for label in labels:
        a = torch.from_numpy(pred == label)[None, None]
        b = torch.from_numpy(ref == label)[None, None]
        hd = compute_hausdorff_distance(a, b, include_background=True, percentile=95, spacing=list(spacing))
        nsd = compute_surface_dice(a.float(), b.float(), [tolerance_mm], include_background=True,
                                   spacing=list(spacing), use_subvoxels=True)
        out.append((float(hd[0, 0]), float(nsd[0, 0])))
    return out


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=4)
    ap.add_argument("--shape", type=int, nargs=3, default=[64, 160, 160])
    ap.add_argument("--spacing", type=float, nargs=3, default=[2.5, 0.8, 0.8])
    ap.add_argument("--tolerance", type=float, default=2.0)
    ap.add_argument("--repeats", type=int, default=1, help="best of N per method")
    ap.add_argument("--skip-uncropped", action="store_true", help="leave out MONAI on the whole volume")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import warnings

    import monai
    import scipy
    import torch

    from autoseg.evaluation.metrics import case_metrics

    warnings.simplefilter("ignore")  # MONAI's deprecation and empty-class warnings (a class can be overdrawn)
    torch.set_num_threads(1)  # the baseline is single-threaded too
    rng = np.random.default_rng(args.seed)
    shape, spacing = tuple(args.shape), tuple(args.spacing)
    labels = [1, 2, 3]
    print(f"machine: {cpu_name()}, {os.cpu_count()} logical CPUs, python {platform.python_version()}, "
          f"numpy {np.__version__}, scipy {scipy.__version__}, monai {monai.__version__}, torch {torch.__version__}")
    print(f"fold: {args.cases} cases of {shape} voxels, spacing {spacing} mm, 3 classes, NSD tolerance "
          f"{args.tolerance} mm, best of {args.repeats}")
    cases = [synthetic_case(shape, spacing, rng) for _ in range(args.cases)]
    case_metrics(*cases[0], labels, spacing, args.tolerance)  # import and warm up outside the timings

    methods = {
        "autoseg (MONAI, cropped)": lambda p, r: [(m["hd95"], m["nsd"]) for m in
                                                  case_metrics(p, r, labels, spacing, args.tolerance)],
        "scipy EDT baseline": lambda p, r: scipy_baseline(p, r, labels, spacing, args.tolerance),
    }
    if not args.skip_uncropped:
        methods["MONAI whole volume"] = lambda p, r: monai_uncropped(p, r, labels, spacing, args.tolerance)
    totals = dict.fromkeys(methods, 0.0)
    hd_diff = 0.0
    for i, (pred, ref) in enumerate(cases):
        line = []
        values = {}
        for name, fn in methods.items():
            best = np.inf
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                values[name] = fn(pred, ref)
                best = min(best, time.perf_counter() - t0)
            totals[name] += best
            line.append(f"{name} {best:.2f}s")
        ours = np.array([v[0] for v in values["autoseg (MONAI, cropped)"]])
        base = np.array([v[0] for v in values["scipy EDT baseline"]])
        hd_diff = max(hd_diff, float(np.nanmax(np.abs(ours - base))))
        print(f"case {i}: " + ", ".join(line))
    ref_name = "autoseg (MONAI, cropped)"
    print()
    print(f"{'method':<28} {'fold total (s)':>15} {'per case (s)':>13} {'ratio to autoseg':>17}")
    for name, total in totals.items():
        print(f"{name:<28} {total:>15.2f} {total / args.cases:>13.3f} {total / totals[ref_name]:>17.2f}")
    print(f"largest HD95 difference autoseg vs scipy baseline: {hd_diff:.2e} mm (same definition; NSD differs by "
          "design: surface-element weighted vs boundary-voxel counted)")


if __name__ == "__main__":
    main()
