"""The losses the CamVid study trains with seeds 2 and 3: ``dice_ce`` and the five furthest above it on the
test images after seed 1 (docs/studies/camvid/README.md says why not all 31).

Reads the report ``autoseg report`` wrote from the store (``tables/runs.csv`` and the test split's
``tables/vs_baseline_test_*.csv``) and writes one comma list for ``autoseg benchmark --loss``. It refuses
while seed 1 is incomplete: every registered loss must have a seed-1 run that ended (done or failed), so
the choice is made once, on the whole of seed 1, and the same list is used on every machine (commit it).

    python scripts/seed_subset.py docs/studies/camvid/report --out docs/studies/camvid/seed_losses.txt
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

BASELINE = "dice_ce"
ENDED = {"done", "failed"}


def choose(report: Path, losses: list[str], n_best: int = 5, seed: str = "1") -> list[str]:
    """``[baseline, *the n_best losses with the largest test difference from it]``, or ValueError naming why not."""
    tables = report / "tables"
    with open(tables / "runs.csv", newline="") as f:
        status = {row["loss"]: row["status"] for row in csv.DictReader(f) if row["seed"] == seed}
    unfinished = sorted(name for name in losses if status.get(name) not in ENDED)
    if unfinished:
        raise ValueError(f"seed {seed} is not complete: no ended run for {', '.join(unfinished)}")
    delta = _seed_differences(tables, seed)
    best = sorted((name for name in delta if name != BASELINE and status.get(name) == "done"),
                  key=lambda name: (-delta[name], name))[:n_best]
    return [BASELINE, *best]


def _seed_differences(tables: Path, seed: str) -> dict[str, float]:
    """Each loss's test mIoU minus the baseline's, on ``seed`` alone. Once other seeds are in the report its
    comparison table averages them, so the seed's own column of the seeds table is used where there is one: the
    choice made after seed 1 can be checked again after seeds 2 and 3 (same images, so the difference of the two
    mIoUs is the paired difference)."""
    seeds = sorted(tables.glob("seeds_test_*.csv"))
    if len(seeds) == 1:
        with open(seeds[0], newline="") as f:
            rows = list(csv.DictReader(f))
        column = next((k for k in rows[0] if k.startswith(f"seed {seed} ")), None) if rows else None
        if column is not None:
            value = {row["loss"]: float(row[column]) for row in rows if row[column] not in ("", "-")}
            if BASELINE in value:
                return {name: v - value[BASELINE] for name, v in value.items()}
    found = sorted(tables.glob("vs_baseline_test_*.csv"))
    if len(found) != 1:
        raise ValueError(f"expected one test-split comparison table (vs_baseline_test_*.csv) in {tables}, "
                         f"found {len(found)}")
    with open(found[0], newline="") as f:
        rows = list(csv.DictReader(f))
    return {row["loss"]: float(row[next(k for k in row if k.startswith("Δ"))]) for row in rows}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("report", type=Path, help="folder `autoseg report` wrote for the CamVid store")
    p.add_argument("--out", type=Path, required=True, help="file for the comma list")
    p.add_argument("--n-best", type=int, default=5)
    args = p.parse_args(argv)
    from autoseg.losses import list_losses

    try:
        chosen = choose(args.report, list_losses(), args.n_best)
    except ValueError as err:
        print(f"seed_subset: {err}", file=sys.stderr)
        return 1
    args.out.write_text(",".join(chosen) + "\n")
    print(f"seed_subset: seeds 2 and 3 train {', '.join(chosen)} ({args.out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
