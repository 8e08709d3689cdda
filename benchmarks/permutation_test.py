"""Cost of the natural-image report's pairwise permutation test with p resolved for Holm (patterns doubled while
fewer than 10 are as extreme, up to 5 x pairs / alpha) against the fixed 2000 random patterns it replaced, in
the same run, on confusion counts shaped like the CamVid study (117 test images, 11 classes, 31 losses).

    nice -n 10 .venv/bin/python benchmarks/permutation_test.py [--losses 31] [--images 117] [--spread 0.6]

``--spread`` sets how far apart the losses' IoU are (0: identical losses, every p large and cheap; 0.6: every
pair far apart, every pair needs the full resolution, the worst case). Prints both times, their ratio, and how
many of the pairs each version can call significant after Holm.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np

from autoseg.evaluation.stats import SwapPatterns, holm, paired_permutation_miou, pairwise_permutation_miou


def counts(n_images: int, n_losses: int, n_classes: int, spread: float, rng: np.random.Generator):
    """Per-image confusion counts: class sizes from a real-looking range, loss q's IoU about 0.3 + spread * q."""
    size = rng.integers(100, 4000, (n_images, 1, n_classes)).astype(float)
    quality = (0.3 + np.linspace(0, spread, n_losses))[None, :, None]
    noise = 1 + 0.05 * rng.standard_normal((n_images, n_losses, n_classes))
    tp = np.round(size * np.clip(quality * noise, 0, 1))
    miss = size - tp
    return tp, np.round(miss * 0.5), miss - np.round(miss * 0.5)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--losses", type=int, default=31)
    ap.add_argument("--images", type=int, default=117)
    ap.add_argument("--classes", type=int, default=11)
    ap.add_argument("--spread", type=float, default=0.6)
    args = ap.parse_args()
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU(s); {args.losses} losses, "
          f"{args.images} images, {args.classes} classes, spread {args.spread}")
    tp, fp, fn = counts(args.images, args.losses, args.classes, args.spread, np.random.default_rng(0))
    pairs = [(i, j) for i in range(args.losses) for j in range(i + 1, args.losses)]

    t0 = time.perf_counter()
    # the replaced version: the same 2000 patterns (one seed) for every pair, drawn once here
    shared = SwapPatterns(args.images, 0)
    fixed = holm([paired_permutation_miou(tp, fp, fn, i, j, 2000, 0, patterns=shared)[1] for i, j in pairs])
    t_fixed = time.perf_counter() - t0
    t0 = time.perf_counter()
    resolved = pairwise_permutation_miou(tp, fp, fn)
    t_resolved = time.perf_counter() - t0
    sig_resolved = int(np.sum(resolved.p_holm[np.triu_indices(args.losses, 1)] < 0.05))
    print(f"fixed 2000 patterns : {t_fixed:7.1f} s, {sum(p < 0.05 for p in fixed)} of {len(pairs)} pairs "
          f"significant (smallest Holm p {min(fixed):.3g})")
    print(f"resolved for Holm   : {t_resolved:7.1f} s, {sig_resolved} of {len(pairs)} pairs significant "
          f"(smallest Holm p {np.nanmin(resolved.p_holm):.3g})")
    print(f"ratio resolved / fixed: {t_resolved / t_fixed:.2f}x the time")


if __name__ == "__main__":
    main()
