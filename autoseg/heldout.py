"""Held-out test sets: whether to predict them, and nnU-Net's fold ensemble (optionally each fold) on ``imagesTs``.

Predictions use each fold's ``checkpoint_final.pth`` (never ``checkpoint_best``: picking the best epoch by the
validation pseudo Dice would leak the validation cases into model selection) and nnU-Net's own inference
(:class:`nnunetv2.inference.predict_from_raw_data.nnUNetPredictor`: sliding window, Gaussian weighting, mirroring
as in its validation). They are written beside the cross-validation folds::

    <nnUNet_results>/<dataset>/<trainer>__<plans>__<configuration>/
        fold_0/ fold_1/ ...                   cross-validation (nnU-Net)
        test_predictions/ensemble/<case>.png  the ensemble of the trained folds (+ autoseg_test.json)
        test_predictions/fold_<N>/            single folds, when asked for

``autoseg_test.json`` in each prediction folder records the folds, the checkpoint, its size and modification time,
the mirroring, the folders read and the seconds per case. A folder whose checkpoints changed (a fold retrained, a
fold added to the ensemble) is predicted again; cases already predicted with the same checkpoints are kept, so an
interrupted prediction resumes. Every case is written to a temporary folder and renamed into place.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autoseg.io import atomic_write_json, file_lock

TEST_DIR = "test_predictions"
META_NAME = "autoseg_test.json"
CHECKPOINT = "checkpoint_final.pth"
ENSEMBLE = "ensemble"
MODES = ("auto", "on", "off")
# ``--test-set auto`` predicts on a CPU only up to this many voxel-passes: test voxels (one channel, all test cases)
# times the networks run on each (the folds of the ensemble, plus each fold alone with per_fold). CamVid's shared
# test subset (117 images of 480 x 360, 20 M pixels) after one fold is under it; with two folds or more, the full
# CamVid test set (40 M), Cityscapes val at 512 x 512 (131 M pixels) and the 12 Synapse test volumes (~460 M voxels)
# are above it: on a CPU those take hours (docs/evaluation.md has the seconds per image measured here).
AUTO_MAX_VOXELS_CPU = 25_000_000


class HeldOutError(ValueError):
    """A test set that cannot be predicted or scored as asked (no imagesTs, no trained fold, a missing channel)."""


@dataclass
class TestSet:
    """The held-out cases of a raw nnU-Net dataset: channel files per case and, where public, their labels."""

    __test__ = False  # not a pytest test class

    images_dir: Path
    labels_dir: Path | None
    file_ending: str
    cases: dict[str, list[Path]]

    def label(self, case: str) -> Path | None:
        if self.labels_dir is None:
            return None
        p = self.labels_dir / f"{case}{self.file_ending}"
        return p if p.is_file() else None

    @property
    def labelled(self) -> bool:
        return self.labels_dir is not None and all(self.label(c) is not None for c in self.cases)

    def voxels(self) -> int:
        """Voxels of the first channel of every test case, read from the file headers only."""
        import SimpleITK as sitk

        total = 0
        for files in self.cases.values():
            reader = sitk.ImageFileReader()
            reader.SetFileName(str(files[0]))
            reader.ReadImageInformation()
            n = 1
            for s in reader.GetSize():
                n *= int(s)
            total += n
        return total


def find_test_set(raw_dataset_dir: str | os.PathLike, dataset_json: dict) -> TestSet | None:
    """The test set of a raw dataset (``imagesTs``, ``labelsTs``), or None when it has no ``imagesTs`` images."""
    raw = Path(raw_dataset_dir)
    images = raw / "imagesTs"
    ending = str(dataset_json.get("file_ending", ".nii.gz"))
    if not images.is_dir():
        return None
    # Files are grouped as nnU-Net groups them (CASE_XXXX<ending>); a natural RGB image holds its three channels in
    # one file, so the number of files per case is not the number of channel names.
    pattern = re.compile(rf"^(?P<case>.+)_(?P<channel>\d{{4}}){re.escape(ending)}$")
    found: dict[str, list[Path]] = {}
    channels: dict[str, list[int]] = {}
    for p in sorted(images.iterdir()):
        m = pattern.match(p.name)
        if m and p.is_file():
            found.setdefault(m["case"], []).append(p)
            channels.setdefault(m["case"], []).append(int(m["channel"]))
    for case, numbers in channels.items():
        if numbers != list(range(len(numbers))):
            raise HeldOutError(f"test case {case} in {images}: channel files {[f.name for f in found[case]]} are not "
                               "numbered _0000, _0001, ... without gaps")
    if not found:
        return None
    labels = raw / "labelsTs"
    return TestSet(images, labels if labels.is_dir() else None, ending, found)


@dataclass
class Decision:
    predict: bool
    reason: str


def decide(mode: str, test_set: TestSet | None, device_type: str, n_models: int = 1) -> Decision:
    """Whether ``plan_and_train --test-set MODE`` predicts the test set, and why (printed in the summary).

    ``on`` predicts whenever there are test images; ``auto`` only labelled test sets (unlabelled ones cannot be
    scored) and, on a CPU, only up to :data:`AUTO_MAX_VOXELS_CPU` voxel-passes (test voxels times ``n_models``, the
    networks run on each image); ``off`` never.
    """
    if mode not in MODES:
        raise HeldOutError(f"test-set mode must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "off":
        return Decision(False, "test-set prediction is off (--test-set off)")
    if test_set is None:
        return Decision(False, "the dataset has no test images (imagesTs)")
    n = len(test_set.cases)
    if mode == "on":
        return Decision(True, f"--test-set on: {n} test case(s)")
    if not test_set.labelled:
        return Decision(False, f"{n} test case(s) without labelsTs cannot be scored; --test-set on predicts them")
    if device_type != "cpu":
        return Decision(True, f"{n} labelled test case(s), predicted on {device_type}")
    voxels = test_set.voxels()
    passes = voxels * max(1, n_models)
    what = f"{n} labelled test case(s), {voxels / 1e6:.1f} M voxels x {n_models} network(s)"
    if passes <= AUTO_MAX_VOXELS_CPU:
        return Decision(True, f"{what}: cheap enough on a CPU")
    return Decision(False, f"{what}: above the {AUTO_MAX_VOXELS_CPU / 1e6:.0f} M voxel-passes of --test-set auto on "
                           "a CPU; use --test-set on or `autoseg predict-test` (on a GPU)")


def trained_folds(run_dir: Path) -> list[int]:
    """Numbered folds of a trainer folder that finished training (``checkpoint_final.pth`` present)."""
    out = []
    for p in Path(run_dir).glob("fold_*"):
        suffix = p.name[len("fold_"):]
        if suffix.isdigit() and (p / CHECKPOINT).is_file():
            out.append(int(suffix))
    return sorted(out)


def ensemble_folds(run_dir: Path, n_cv_folds: int | None = None) -> list[int]:
    """The folds nnU-Net's ensemble averages: the trained cross-validation folds.

    A converter may add folds after the cross-validation (CamVid's fold 5 is SegNet's own train/val split); they
    are not mixed into the ensemble of CV folds, and are used alone only when no CV fold is trained.
    """
    folds = trained_folds(run_dir)
    if n_cv_folds:
        cv = [f for f in folds if f < n_cv_folds]
        return cv or folds
    return folds


@dataclass
class TestPrediction:
    """One prediction folder of the test set: the ensemble or a single fold."""

    __test__ = False  # not a pytest test class

    name: str  # "ensemble" or "fold_<N>"
    folder: Path
    folds: list[int]
    n_cases: int
    n_predicted: int  # predicted in this call (the others were there already)
    seconds: float  # spent predicting in this call
    seconds_per_case: dict[str, float] = field(default_factory=dict)  # every case, from autoseg_test.json

    def as_dict(self) -> dict[str, Any]:
        per_case = list(self.seconds_per_case.values())
        return {"name": self.name, "folder": str(self.folder), "folds": self.folds, "n_cases": self.n_cases,
                "n_predicted": self.n_predicted, "seconds": round(self.seconds, 2),
                "mean_seconds_per_case": round(sum(per_case) / len(per_case), 3) if per_case else None}


def fold_folder(fold: int | str) -> str:
    """The name of one fold's prediction folder in ``test_predictions/``; the evaluation reads the fold back from it."""
    return f"fold_{fold}"


def _stamp(path: Path) -> str:
    st = path.stat()
    return f"{st.st_size}:{st.st_mtime_ns}"


def _locked(folder: Path):
    """One writer per prediction folder (folds trained in parallel may all ask for the ensemble)."""
    folder.mkdir(parents=True, exist_ok=True)
    return file_lock(folder / "predictions")


def predict_test_set(run_dir: str | os.PathLike, test_set: TestSet, device: Any = "cpu",
                     folds: Sequence[int] | None = None, per_fold: bool = False, mirroring: bool = True,
                     n_cv_folds: int | None = None, log: Callable[[str], None] = print,
                     ensemble: bool = True) -> list[TestPrediction]:
    """Predict the test set with the ensemble of ``folds`` (default: the trained CV folds) and, with ``per_fold``,
    with each of them alone (``test_predictions/fold_<N>``). Returns the ensemble first. ``ensemble=False`` skips
    the ensemble: a grid run predicts with its own fold only, and folds trained in parallel must not rewrite one
    shared ensemble folder with different folds.

    ``run_dir`` is a ``<trainer>__<plans>__<configuration>`` folder; its ``plans.json`` and ``dataset.json`` (copied
    there by nnU-Net) define the inference, and the trainer class is found by name as ``nnUNetv2_predict`` does.
    """
    import torch

    run_dir = Path(run_dir)
    device = torch.device(device) if not isinstance(device, torch.device) else device
    available = trained_folds(run_dir)
    folds = sorted(set(folds)) if folds is not None else ensemble_folds(run_dir, n_cv_folds)
    if not folds:
        raise HeldOutError(f"no trained fold (fold_N/{CHECKPOINT}) in {run_dir}")
    missing = [f for f in folds if f not in available]
    if missing:
        raise HeldOutError(f"fold(s) {missing} of {run_dir} have no {CHECKPOINT} (trained: {available or 'none'})")
    jobs = ([(ENSEMBLE, folds)] if ensemble else []) + ([(fold_folder(f), [f]) for f in folds] if per_fold else [])
    out = []
    for name, use in jobs:
        folder = run_dir / TEST_DIR / name
        with _locked(folder):
            out.append(_predict_folder(run_dir, folder, name, use, test_set, device, mirroring, log))
    return out


def _predict_folder(run_dir: Path, folder: Path, name: str, folds: list[int], test_set: TestSet, device,
                    mirroring: bool, log: Callable[[str], None]) -> TestPrediction:
    stamps = {str(f): _stamp(run_dir / f"fold_{f}" / CHECKPOINT) for f in folds}
    wanted = {"kind": name, "folds": folds, "checkpoint": CHECKPOINT, "checkpoints": stamps, "mirroring": mirroring}
    meta_path = folder / META_NAME
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        meta = {}
    ending = test_set.file_ending
    if any(meta.get(k) != v for k, v in wanted.items()):
        # other checkpoints or settings: nothing in the folder describes the models any more
        for p in folder.glob(f"*{ending}"):
            p.unlink()
        meta = {}
    done = dict(meta.get("seconds_per_case") or {})
    done = {c: s for c, s in done.items() if (folder / f"{c}{ending}").is_file()}
    todo = [c for c in test_set.cases if c not in done]
    meta = {**wanted, "images_dir": str(test_set.images_dir),
            "labels_dir": str(test_set.labels_dir) if test_set.labels_dir else None, "file_ending": ending,
            "device": str(device), "status": "running", "seconds_per_case": done}
    atomic_write_json(meta_path, meta)
    t_all = time.time()
    if todo:
        what = f"ensemble of folds {', '.join(map(str, folds))}" if name == ENSEMBLE else f"fold {folds[0]}"
        log(f"  test set: predicting {len(todo)} of {len(test_set.cases)} case(s) with the {what} ({CHECKPOINT}, "
            f"{'with' if mirroring else 'without'} mirroring) into {folder}")
        predictor = _predictor(run_dir, folds, device, mirroring)
        tmp = Path(tempfile.mkdtemp(prefix=".partial-", dir=folder))
        try:
            for i, case in enumerate(todo, 1):
                t0 = time.time()
                with contextlib.redirect_stdout(io.StringIO()):  # nnU-Net prints a line per case
                    predictor.predict_from_files_sequential([[str(f) for f in test_set.cases[case]]],
                                                            [str(tmp / case)], save_probabilities=False,
                                                            overwrite=True)
                os.replace(tmp / f"{case}{ending}", folder / f"{case}{ending}")
                done[case] = round(time.time() - t0, 3)
                meta["seconds_per_case"] = done
                atomic_write_json(meta_path, meta)
                if i == len(todo) or i % max(1, len(todo) // 10) == 0:
                    log(f"  test set: {i}/{len(todo)} predicted ({done[case]:.1f} s for the last)")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    seconds = time.time() - t_all
    meta["status"] = "done"
    atomic_write_json(meta_path, meta)
    return TestPrediction(name, folder, folds, len(test_set.cases), len(todo), seconds if todo else 0.0, done)


def _predictor(run_dir: Path, folds: list[int], device, mirroring: bool):
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from autoseg.paths import extension_trainer_dir
    from autoseg.prepare import temporary_env

    # The checkpoint names its trainer class; autoseg's generated trainers (and the variants recorded in
    # <results>/autoseg_trainers.json) are found as nnUNetv2_predict finds them.
    ext = str(extension_trainer_dir())
    paths = [p for p in os.environ.get("nnUNet_extTrainer", "").split(os.pathsep) if p]
    env = {"nnUNet_extTrainer": os.pathsep.join([ext, *[p for p in paths if p != ext]]),
           "nnUNet_results": str(run_dir.parent.parent)}
    with temporary_env(**env), contextlib.redirect_stdout(io.StringIO()):
        predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=mirroring,
                                    perform_everything_on_device=device.type == "cuda", device=device,
                                    verbose=False, allow_tqdm=False)
        predictor.initialize_from_trained_model_folder(str(run_dir), use_folds=tuple(folds),
                                                       checkpoint_name=CHECKPOINT)
    return predictor


def read_prediction_meta(folder: Path) -> dict | None:
    """``autoseg_test.json`` of a test prediction folder, or None."""
    try:
        return json.loads((Path(folder) / META_NAME).read_text())
    except (OSError, ValueError):
        return None


def staleness(folder: Path, run_dir: Path, n_cv_folds: int | None = None) -> str:
    """Why a prediction folder no longer stands for the trained models, or "" when it does: a fold was retrained
    (its checkpoint changed) or, for the ensemble, folds were trained after it was predicted."""
    meta = read_prediction_meta(folder) or {}
    made = [int(f) for f in meta.get("folds", [])]
    if Path(folder).name == ENSEMBLE:
        trained = ensemble_folds(run_dir, n_cv_folds)
        if made and made != trained:
            return f"the ensemble was predicted with folds {made}, but folds {trained} are trained now"
    for fold, stamp in (meta.get("checkpoints") or {}).items():
        ckpt = Path(run_dir) / f"fold_{fold}" / CHECKPOINT
        if not ckpt.is_file() or _stamp(ckpt) != stamp:
            return f"fold {fold}'s {CHECKPOINT} changed after the test set was predicted"
    return ""


def prediction_folders(run_dir: Path) -> list[Path]:
    """The test prediction folders of a trainer folder that hold an ``autoseg_test.json``, ensemble first."""
    base = Path(run_dir) / TEST_DIR
    if not base.is_dir():
        return []
    found = [p for p in base.iterdir() if p.is_dir() and (p / META_NAME).is_file()]
    return sorted(found, key=lambda p: (p.name != ENSEMBLE, len(p.name), p.name))


def score_prediction(prediction_folder: Path, test_set: TestSet, dataset_json: dict):
    """Scores (:class:`autoseg.evaluation.summary.Scores`) of one test prediction folder against ``labelsTs``,
    or None when the test set has no labels."""
    from autoseg.evaluation.summary import dataset_info, folder_pairs, score_pairs

    if not test_set.labelled:
        return None
    pairs = folder_pairs(prediction_folder, test_set.labels_dir, test_set.file_ending)
    return score_pairs(pairs, dataset_info(dataset_json))


def run_test_set(mode: str, raw_dataset_dir: Path, dataset_json: dict, run_dir: Path, device: Any,
                 per_fold: bool = False, log: Callable[[str], None] = print) -> dict[str, Any]:
    """The test-set step of ``plan_and_train``: decide (``mode`` auto/on/off), predict, score.

    Returns ``{"mode", "predicted", "reason", "n_cases", "predictions": [{..., "scores": {...}}]}``.
    """
    import torch

    device = torch.device(device) if not isinstance(device, torch.device) else device
    test_set = find_test_set(raw_dataset_dir, dataset_json)
    n_cv = (dataset_json.get("autoseg") or {}).get("n_cv_folds")
    n_folds = len(ensemble_folds(run_dir, n_cv))
    decision = decide(mode, test_set, device.type, n_models=n_folds * (2 if per_fold else 1))
    out: dict[str, Any] = {"mode": mode, "predicted": decision.predict, "reason": decision.reason,
                           "n_cases": len(test_set.cases) if test_set else 0, "predictions": []}
    log(f"test set: {decision.reason}" + ("" if decision.predict else "; not predicted"))
    if not decision.predict:
        return out
    for pred in predict_test_set(run_dir, test_set, device, per_fold=per_fold, n_cv_folds=n_cv, log=log):
        scores = score_prediction(pred.folder, test_set, dataset_json)
        out["predictions"].append({**pred.as_dict(), "scores": scores.as_dict() if scores else None})
    return out


def trainer_folders(results: str | os.PathLike) -> list[Path]:
    """``<trainer>__<plans>__<configuration>`` folders below ``results`` (a results root, one dataset folder or one
    trainer folder) with at least one trained fold."""
    results = Path(results)
    found = []
    for dirpath, dirnames, _ in os.walk(results):
        dirnames.sort()
        here = Path(dirpath)
        if "__" in here.name and trained_folds(here):
            found.append(here)
            dirnames.clear()
        else:
            dirnames[:] = [d for d in dirnames if not d.startswith("fold_") and d != TEST_DIR]
    return found


def predict_results(results: str | os.PathLike, raw: str | os.PathLike | None = None, device: Any = "cpu",
                    folds: Sequence[int] | None = None, per_fold: bool = False, mirroring: bool = True,
                    log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """``autoseg predict-test``: predict and score the test set of every trained configuration under ``results``.

    The raw dataset (``imagesTs``, ``labelsTs``) is looked for in ``raw``, else ``$nnUNet_raw``, else the
    ``nnUNet_raw`` folder beside the results root (autoseg's work-folder layout). A configuration whose dataset has
    no test images is reported and skipped. Returns one entry per configuration.
    """
    out = []
    folders = trainer_folders(results)
    if not folders:
        raise HeldOutError(f"no trained fold (fold_N/{CHECKPOINT}) below {results}")
    for run_dir in folders:
        dataset = run_dir.parent.name
        dataset_json = json.loads((run_dir / "dataset.json").read_text())
        roots = [Path(raw)] if raw else []
        if os.environ.get("nnUNet_raw"):
            roots.append(Path(os.environ["nnUNet_raw"]))
        roots.append(run_dir.parent.parent.parent / "nnUNet_raw")
        raw_dir = next((r / dataset for r in roots if (r / dataset).is_dir()), None)
        entry: dict[str, Any] = {"run_dir": str(run_dir), "dataset": dataset, "predictions": []}
        test_set = find_test_set(raw_dir, dataset_json) if raw_dir else None
        if test_set is None:
            entry["reason"] = (f"no raw dataset folder {dataset} (looked in {', '.join(map(str, roots))})"
                               if raw_dir is None else f"{raw_dir} has no test images (imagesTs)")
            log(f"{run_dir}: {entry['reason']}; skipped")
            out.append(entry)
            continue
        log(f"{run_dir}: {len(test_set.cases)} test case(s) in {test_set.images_dir}")
        n_cv = (dataset_json.get("autoseg") or {}).get("n_cv_folds")
        for pred in predict_test_set(run_dir, test_set, device, folds=folds, per_fold=per_fold, mirroring=mirroring,
                                     n_cv_folds=n_cv, log=log):
            scores = score_prediction(pred.folder, test_set, dataset_json)
            entry["predictions"].append({**pred.as_dict(), "scores": scores.as_dict() if scores else None})
        out.append(entry)
    return out
