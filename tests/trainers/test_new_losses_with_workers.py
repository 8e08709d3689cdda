"""Issue 9's losses train in a real nnU-Net trainer with augmentation worker processes on.

For each loss: nnU-Net's multi-process augmenter feeds the trainer, every batch carries the map
kinds the loss declares at every deep-supervision scale it is evaluated at (computed by the
workers, equal to scipy's exact transform of that scale's augmented labels), the auxiliary heads'
outputs reach the loss, the loss falls while a worker batch is fitted, fresh training and validation
batches keep coming with their maps, and the workers are shut down. For one maps loss and one
heads loss, ``nnUNetv2_predict`` then segments a bundled case with the trained model.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import scipy_signed, smoke_nnunet
from scipy import ndimage
from skimage.morphology import skeletonize

from autoseg.losses import build_loss, get_loss_info, list_losses
from autoseg.losses import maps as maps_module
from autoseg.losses.base import SegmentationLoss
from autoseg.losses.compound import CompoundLoss
from autoseg.losses.maps import MAP_KINDS
from autoseg.trainers.heads import HEAD_PREFIX, head_requests

pytestmark = pytest.mark.slow

#: the losses issue 9 added; the list derived from the registry below must keep holding all of them
ISSUE9_LOSSES = {"dmce", "boundary", "hausdorff_dt", "hausdorff_er", "region_wise", "skeleton_recall", "boundary_dou",
                 "cldice", "active_boundary", "boundary_aware", "inverseform", "conditional_boundary"}
#: Prediction with a model trained with worker maps (through the ``nnUNetv2_predict`` console entry point)
#: and with one trained with heads (through nnU-Net's predictor API, in this process: the console
#: path for a heads model is tested by test_heads_train.py with inverseform). Each console run costs
#: ~20 s (a fresh nnU-Net process plus its spawned preprocessing and export processes), and every
#: model here is the same plain nnU-Net network at inference, so predicting with all twelve would
#: add minutes and test nothing new.
PREDICT_CONSOLE, PREDICT_API = "boundary", "boundary_aware"
N_WORKERS = 2  # nnU-Net's nnUNet_n_proc_DA: 2 training workers, 1 validation worker


def _has_epoch_hook(loss: torch.nn.Module) -> bool:
    # A compound's hook only passes the epoch on; what counts is a component with a schedule of its own.
    return any(type(m).on_epoch_start is not SegmentationLoss.on_epoch_start
               for m in loss.modules() if isinstance(m, SegmentationLoss) and not isinstance(m, CompoundLoss))


def losses_needing_the_pipeline() -> list[str]:
    """Every registered loss that asks the trainer for something (maps, heads, an epoch hook), and
    every loss of the boundary category (the distance, boundary and topology losses of issue 9)."""
    chosen = []
    for name in list_losses():
        loss = build_loss(name)
        heads, features = head_requests(loss)
        if (get_loss_info(name).category == "boundary" or loss.extra_inputs or heads or features
                or _has_epoch_hook(loss)):
            chosen.append(name)
    return chosen


LOSSES = losses_needing_the_pipeline()


def test_the_list_holds_every_loss_of_issue_9():
    assert ISSUE9_LOSSES <= set(LOSSES), sorted(ISSUE9_LOSSES - set(LOSSES))
    # a compound's epoch hook only relays it: dice_ce and its kind need nothing of the pipeline
    assert not {"ce", "dice", "dice_ce", "dice_topk"} & set(LOSSES)
    # prediction covers a model trained with worker maps and one trained with heads
    assert any(k in MAP_KINDS for k in build_loss(PREDICT_CONSOLE).extra_inputs)
    assert head_requests(build_loss(PREDICT_API))[0]


@pytest.fixture(scope="module")
def workers_setup(smoke_run, tmp_path_factory):
    from autoseg.paths import extension_trainer_dir

    with smoke_nnunet(smoke_run, tmp_path_factory.mktemp("results_workers"), nnUNet_n_proc_DA=str(N_WORKERS),
                      nnUNet_extTrainer=str(extension_trainer_dir())) as setup:
        yield setup


# ------------------------------------------------------------------ independent references of the maps
def _reference_map(kind: str, label: np.ndarray, c: int, spacing) -> np.ndarray:
    if kind == "signed_distance":
        return scipy_signed(label, c, spacing)
    if kind == "distance":
        return np.abs(scipy_signed(label, c, spacing))
    if kind == "tubed_skeleton":  # Kirchhoff et al.: the skeleton dilated twice with the cross, inside the class
        m = label == c
        if not m.any() or m.all():
            return np.zeros(label.shape)
        cross = ndimage.generate_binary_structure(label.ndim, 1)
        return ndimage.binary_dilation(skeletonize(m), cross, iterations=2) & m
    if kind == "skeleton_level":  # clDice's reference skeleton by erosion level, with scipy's binary morphology
        m = label == c
        level = np.zeros(label.shape)
        cross = ndimage.generate_binary_structure(label.ndim, 1)
        cube = ndimage.generate_binary_structure(label.ndim, label.ndim)
        x, k = m, 0
        while x.any():
            # the patch outside neither erodes (border 1) nor dilates (border 0)
            eroded = ndimage.binary_erosion(x, cross, border_value=1)
            entering = x & ~ndimage.binary_dilation(eroded, cube, border_value=0) & (level == 0)
            level[entering] = k + 1
            if np.array_equal(eroded, x):
                break
            x, k = eroded, k + 1
        return level
    raise AssertionError(f"no reference for map kind {kind!r}: add one here")


def _refuse_maps(*args, **kwargs):
    raise AssertionError("a loss computed ground-truth maps in the training process: the workers' maps were not used")


def _expected_layout(loss: torch.nn.Module, weights: list[float]) -> list[set[str]]:
    """The kinds each deep-supervision scale must carry, from the loss's own declarations: every kind it
    declares at every weighted scale, at full resolution only for a full-resolution-only loss."""
    kinds = {k for k in loss.extra_inputs if k in MAP_KINDS}
    full_only = getattr(loss, "full_resolution_only", False)
    return [kinds if w and (i == 0 or not full_only) else set() for i, w in enumerate(weights)]


def _check_worker_maps(trainer, batch, expected: list[set[str]], check_values: bool) -> None:
    """The collated batch holds the expected kinds at each scale; with ``check_values``, equal to scipy's."""
    num_classes = trainer.label_manager.num_segmentation_heads
    targets = batch["target"]
    assert isinstance(targets, list) and len(targets) == len(expected)
    labels, extras = trainer.split_batch_target(targets)
    spacing = np.asarray(trainer.configuration_manager.spacing, float)
    patch = np.asarray(trainer.configuration_manager.patch_size, float)
    for scale, kinds in enumerate(expected):
        assert targets[scale].shape[1] == 1 + len(kinds) * num_classes, (scale, tuple(targets[scale].shape))
        assert set(extras[scale]) == kinds, (scale, sorted(extras[scale]), sorted(kinds))
        if not kinds or not check_values:
            continue
        lab = labels[scale].numpy()
        # this scale's voxel spacing, from the sizes of the patch and of this scale's labels
        scale_spacing = tuple(spacing * patch / np.asarray(lab.shape[2:], float))
        for kind in kinds:
            got = extras[scale][kind].numpy()
            assert got.shape == (lab.shape[0], num_classes, *lab.shape[2:])
            for b in range(lab.shape[0]):
                for c in range(num_classes):
                    if c == 0 and getattr(trainer.autoseg_loss, "include_background", True) is False:
                        # a loss that leaves the background out never reads its maps: the workers skip them
                        assert not got[b, 0].any(), f"{kind} scale {scale} case {b}: background map computed"
                        continue
                    np.testing.assert_allclose(got[b, c], _reference_map(kind, lab[b, 0], c, scale_spacing),
                                               rtol=1e-5, atol=1e-4, err_msg=f"{kind} scale {scale} case {b} class {c}")
    # maps left at 0 everywhere would equal the reference only for patches without a boundary: rule that out
    if check_values and any(expected):
        assert any(float(v.abs().max()) > 0 for e in extras for v in e.values())


@pytest.mark.timeout(600)
@pytest.mark.parametrize("loss_name", LOSSES)
def test_loss_trains_with_augmentation_workers(loss_name, workers_setup, tmp_path, monkeypatch):
    from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter

    from autoseg.trainers.factory import make_trainer_class

    plans, dataset_json, r, env = workers_setup
    torch.manual_seed(0)
    cls = make_trainer_class(loss_name)
    trainer = cls(plans={**plans, "continue_training": False}, configuration=r["configuration"], fold=0,
                  dataset_json=dataset_json, device=torch.device("cpu"))
    trainer.initial_lr = 1e-2
    children_before = {p.pid for p in multiprocessing.active_children()}
    workers = []
    try:
        trainer.on_train_start()
        loaders = (trainer.dataloader_train, trainer.dataloader_val)
        assert all(isinstance(dl, NonDetMultiThreadedAugmenter) for dl in loaders), [type(d) for d in loaders]
        workers = [p for dl in loaders for p in dl._processes]
        assert len(workers) == N_WORKERS + max(1, N_WORKERS // 2) and all(p.is_alive() for p in workers)

        weights = trainer.deep_supervision_weights()
        expected = _expected_layout(trainer.autoseg_loss, weights)
        wanted_heads = {HEAD_PREFIX + h for h in head_requests(trainer.autoseg_loss)[0]}
        handed = []  # the extras (one dict per scale) the deep-supervision loss receives at each call
        trainer.loss.register_forward_pre_hook(lambda module, args: handed.append(args[2]))
        # The workers are running (forked above); from now on, a loss that computed its ground-truth maps
        # itself in this process (its standalone fallback) instead of using the workers' would fail here.
        monkeypatch.setattr(maps_module, "compute_maps", _refuse_maps)

        trainer.on_epoch_start()  # the epoch hook (Kervadec's schedule) runs as in nnU-Net's loop
        trainer.on_train_epoch_start()
        # The loss must fall while one worker batch is fitted: fresh batches differ (patch, augmentation,
        # foreground) by far more than a few iterations change the loss, so a fall across them would be
        # a coin toss; one fixed batch isolates what is tested, the optimisation through the trainer.
        batch = next(trainer.dataloader_train)
        _check_worker_maps(trainer, batch, expected, check_values=True)
        losses = [float(trainer.train_step(batch)["loss"]) for _ in range(8)]
        assert all(np.isfinite(losses)), losses
        assert min(losses[-3:]) < losses[0], f"{loss_name}: {losses}"

        fresh = next(trainer.dataloader_train)  # the workers keep delivering batches with their maps
        _check_worker_maps(trainer, fresh, expected, check_values=False)
        assert np.isfinite(trainer.train_step(fresh)["loss"])
        trainer.on_validation_epoch_start()
        val = next(trainer.dataloader_val)
        _check_worker_maps(trainer, val, expected, check_values=False)
        assert np.isfinite(trainer.validation_step(val)["loss"])

        assert len(handed) == 10
        for extras in handed:  # the trainer handed the loss the workers' maps and the heads' outputs
            assert [set(e) & set(MAP_KINDS) for e in extras] == expected
            assert set(extras[0]) - set(MAP_KINDS) == wanted_heads
    finally:
        if trainer.dataloader_train is not None:
            trainer.on_train_end()  # writes checkpoint_final.pth and shuts the workers down
    assert not any(p.is_alive() for p in workers), "augmentation workers left running"
    leaked = [p for p in multiprocessing.active_children() if p.pid not in children_before]
    assert not leaked, leaked
    if loss_name == PREDICT_CONSOLE:
        _predict_with_console(cls.__name__, r, env, tmp_path)
    elif loss_name == PREDICT_API:
        _predict_with_api(trainer.output_folder_base, r, env, tmp_path)


def _one_case(r: dict, env: dict, tmp_path: Path) -> tuple[Path, Path]:
    """A folder holding one bundled training image (a link), and that image."""
    images = Path(env["nnUNet_raw"]) / r["dataset"] / "imagesTr"
    inp = tmp_path / "in"
    inp.mkdir()
    case = sorted(images.glob("*_0000.nii.gz"))[0]
    os.symlink(case, inp / case.name)
    return inp, case


def _check_segmentation(out_file: Path, case: Path, r: dict, env: dict) -> None:
    out, image = sitk.ReadImage(str(out_file)), sitk.ReadImage(str(case))
    assert out.GetSize() == image.GetSize()
    np.testing.assert_allclose(out.GetSpacing(), image.GetSpacing(), rtol=1e-5)
    known = json.loads((Path(env["nnUNet_raw"]) / r["dataset"] / "dataset.json").read_text())["labels"].values()
    assert set(np.unique(sitk.GetArrayFromImage(out)).tolist()) <= {int(k) for k in known}


def _predict_with_console(trainer_name: str, r: dict, env: dict, tmp_path: Path) -> None:
    """nnU-Net's own ``nnUNetv2_predict`` with the trained model's checkpoint_final.pth, one bundled case."""
    inp, case = _one_case(r, env, tmp_path)
    bindir = Path(sys.executable).parent
    pred = subprocess.run([str(bindir / "nnUNetv2_predict"), "-i", str(inp), "-o", str(tmp_path / "out"), "-d",
                           r["dataset"], "-c", r["configuration"], "-tr", trainer_name, "-f", "0",
                           "-chk", "checkpoint_final.pth", "-device", "cpu", "--disable_tta", "-npp", "1",
                           "-nps", "1"],
                          capture_output=True, text=True, env={**os.environ, **env}, timeout=300)
    assert pred.returncode == 0, (pred.stdout[-3000:], pred.stderr[-3000:])
    _check_segmentation(tmp_path / "out" / case.name.replace("_0000", ""), case, r, env)


def _predict_with_api(model_folder: str, r: dict, env: dict, tmp_path: Path) -> None:
    """nnU-Net's predictor API on the model folder: it resolves the trainer by the name in the checkpoint,
    as ``nnUNetv2_predict`` does, and builds the plain network the checkpoint must load into."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    inp, case = _one_case(r, env, tmp_path)
    predictor = nnUNetPredictor(use_mirroring=False, device=torch.device("cpu"), allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(model_folder, use_folds=(0,), checkpoint_name="checkpoint_final.pth")
    (tmp_path / "out").mkdir()  # the sequential path writes its arguments file there before creating it
    predictor.predict_from_files_sequential(str(inp), str(tmp_path / "out"), save_probabilities=False, overwrite=True)
    _check_segmentation(tmp_path / "out" / case.name.replace("_0000", ""), case, r, env)
