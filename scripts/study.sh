#!/usr/bin/env bash
# The loss studies of docs/studies/ (issue 13): every registered loss, one CPU budget for all, through
# `autoseg benchmark`, results in a committed store, report rebuilt from it.
#
#   bash scripts/study.sh [hippocampus] [run]   # medical half: run (or continue) the grid, then rebuild the report
#   bash scripts/study.sh [hippocampus] report  # only rebuild the report from the committed store
#   bash scripts/study.sh camvid [run|report]   # natural half, the same for CamVid
#
# hippocampus: the bundled MSD Hippocampus sample, nnU-Net's 5 folds, run fold by fold (every loss's fold
# 0, then every loss's fold 1, ...), so a grid stopped part-way is already a paired comparison of all
# losses on the same folds.
# camvid: CamVid (../shared/data/camvid, SegNet's 11 classes) resized to 240 x 180, trained on SegNet's
# train split (the converter's fold 5: train, with SegNet's val as the validation fold), scored on the
# 117 test images by mIoU; seeds 1-3 stand in for folds, run seed by seed for the same reason.
#
# Both are resumable: rerun the same command on any machine with this checkout; runs whose record in the
# store says `done` are skipped, interrupted ones resume from nnU-Net's checkpoint_latest.pth where the work
# folder still has it (else they start again). The store (records only: about 18 KB per Hippocampus run,
# 0.9 MB per CamVid run with its per-image test rows) is what is committed; checkpoints and predictions
# stay in the work folder ($AUTOSEG_STUDY_WORK).
set -euo pipefail
cd "$(dirname "$0")/.."

STUDY_NAME=hippocampus
case "${1:-}" in
    hippocampus|camvid) STUDY_NAME=$1; shift ;;
esac
ACTION=${1:-run}
if [ "$ACTION" != run ] && [ "$ACTION" != report ]; then
    echo "usage: bash scripts/study.sh [hippocampus|camvid] [run|report]" >&2
    exit 2
fi

AUTOSEG=${AUTOSEG:-.venv/bin/autoseg}
STUDY=docs/studies/$STUDY_NAME
STORE=$STUDY/store
WORK=${AUTOSEG_STUDY_WORK:-$HOME/autoseg_study/$STUDY_NAME}
unset nnUNet_raw nnUNet_preprocessed nnUNet_results  # the work folder's own (autoseg/paths.py: these would win)
JOBS=${STUDY_JOBS:-2}

if [ "$STUDY_NAME" = hippocampus ]; then
    # nnU-Net's quick CPU plan (autoseg/plans/budgets.py) trained for 40 epochs of 25 iterations (1,000
    # iterations; the demo's quick preset trains 50 x 25), two runs at once (one thread each: 1.17x the
    # throughput of one run with two threads on a 2-core machine). About 260 s per run, 11 hours for the
    # 31 losses x 5 folds; docs/studies/hippocampus/README.md says why not less.
    BUDGET=(--budget quick --epochs 40 --iterations 25)
    if [ "$ACTION" = run ]; then
        for fold in ${STUDY_FOLDS:-0 1 2 3 4}; do
            "$AUTOSEG" benchmark --loss all --folds "$fold" "${BUDGET[@]}" --jobs "$JOBS" --work-dir "$WORK" --store "$STORE"
        done
    fi
else
    # The quick preset's 2D network for CamVid at 240 x 180 (patch 192 x 256, batch 10, 16..128 features);
    # docs/studies/camvid/README.md gives the pilot that chose the schedule.
    BUDGET=(--config 2d --budget quick --epochs 60 --iterations 10)
    DATASET=Dataset604_CamVid240
    if [ "$ACTION" = run ]; then
        if [ ! -f "$WORK/nnUNet_raw/$DATASET/dataset.json" ]; then
            "$AUTOSEG" convert camvid --source "${CAMVID_SOURCE:-../shared/data/camvid}" --size 240x180 \
                --dataset-id 604 --name CamVid240 --out "$WORK/nnUNet_raw" --quiet
        fi
        # Seed 1 trains every loss; seeds 2 and 3 train dice_ce and the five losses furthest above it on the
        # test images after seed 1 (docs/studies/camvid/README.md: 13 hours for all three seeds of all 31).
        # The list is written once, from the store, when seed 1 is complete, and committed with it.
        SUBSET=$STUDY/seed_losses.txt
        for seed in ${STUDY_SEEDS:-1 2 3}; do
            LOSSES=all
            if [ "$seed" != 1 ]; then
                if [ ! -f "$SUBSET" ]; then
                    "$AUTOSEG" report "$STORE" --out "$STUDY/report"
                    "${PYTHON:-.venv/bin/python}" scripts/seed_subset.py "$STUDY/report" --out "$SUBSET"
                fi
                LOSSES=$(cat "$SUBSET")
            fi
            "$AUTOSEG" benchmark --dataset "$DATASET" --loss "$LOSSES" --folds 5 \
                --seeds "$seed" "${BUDGET[@]}" --test-set on --jobs "$JOBS" --work-dir "$WORK" --store "$STORE"
        done
    fi
fi
"$AUTOSEG" report "$STORE" --out "$STUDY/report"
