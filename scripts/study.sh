#!/usr/bin/env bash
# The loss study of docs/studies/hippocampus/ (issue 13): every registered loss on the bundled
# Hippocampus sample, 5 folds, one CPU budget for all, through `autoseg benchmark`.
#
#   bash scripts/study.sh            # run (or continue) the grid, then rebuild the report
#   bash scripts/study.sh report     # only rebuild the report from the committed store
#
# The grid runs fold by fold (every loss's fold 0, then every loss's fold 1, ...), so a grid that is
# stopped part-way is already a paired comparison of all losses on the same folds. It is resumable:
# rerun the same command on any machine with this checkout; runs whose record in the store says
# `done` are skipped, interrupted ones resume from nnU-Net's checkpoint_latest.pth where the work
# folder still has it (else they start again). The store (records only, a few KB per run) is what is
# committed; checkpoints and predictions stay in the work folder ($AUTOSEG_STUDY_WORK).
set -euo pipefail
cd "$(dirname "$0")/.."

AUTOSEG=${AUTOSEG:-.venv/bin/autoseg}
STUDY=docs/studies/hippocampus
STORE=$STUDY/store
WORK=${AUTOSEG_STUDY_WORK:-$HOME/autoseg_study/hippocampus}
# The budget: nnU-Net's quick CPU plan (autoseg/plans/budgets.py) trained for 40 epochs of 25
# iterations (1,000 iterations; the demo's quick preset trains 50 x 25), two runs at once (one thread
# each: 1.17x the throughput of one run with two threads on a 2-core machine). About 260 s per run,
# 11 hours for the 31 losses x 5 folds; docs/studies/hippocampus/README.md says why not less.
BUDGET=(--budget quick --epochs 40 --iterations 25)
JOBS=${STUDY_JOBS:-2}
FOLDS=${STUDY_FOLDS:-0 1 2 3 4}

if [ "${1:-run}" != "report" ]; then
    for fold in $FOLDS; do
        "$AUTOSEG" benchmark --loss all --folds "$fold" "${BUDGET[@]}" --jobs "$JOBS" --work-dir "$WORK" --store "$STORE"
    done
fi
"$AUTOSEG" report "$STORE" --out "$STUDY/report"
