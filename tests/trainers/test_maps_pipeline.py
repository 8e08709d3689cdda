"""Maps in nnU-Net's data pipeline: computed after rotation and scaling, per deep-supervision scale, handed to the loss."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
from batchgeneratorsv2.transforms.utils.deep_supervision_downsampling import DownsampleSegForDSTransform
from conftest import scipy_signed

from autoseg.losses import build_loss
from autoseg.trainers.deep_supervision import DeepSupervisionLoss, map_kinds_per_scale
from autoseg.trainers.maps_transform import LossMapsTransform, scale_spacings, split_target


def test_maps_follow_rotation_scaling_and_deep_supervision():
    torch.manual_seed(0)
    shape = (36, 44)
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    label = np.zeros(shape, np.int16)
    label[(yy - 18) ** 2 / 100 + (xx - 20) ** 2 / 36 <= 1] = 1  # an ellipse: rotation changes its maps
    label[4:9, 30:40] = 2
    spacing = (0.8, 1.6)
    ds_scales = [[1.0, 1.0], [0.5, 0.5], [0.25, 0.25]]
    spacings = scale_spacings(spacing, shape, ds_scales)
    assert spacings == [(0.8, 1.6), (1.6, 3.2), (3.2, 6.4)]
    layout = [("signed_distance", "distance"), ("signed_distance", "distance"), ()]
    pipeline = ComposeTransforms([
        SpatialTransform(shape, 0, random_crop=False, p_rotation=1.0, rotation=(0.6, 0.6), p_scaling=1.0,
                         scaling=(0.8, 0.8), mode_seg="nearest"),
        DownsampleSegForDSTransform(ds_scales=ds_scales),
        LossMapsTransform(layout, 3, spacings),
    ])
    image = torch.zeros(1, *shape)
    out = pipeline(image=image, segmentation=torch.from_numpy(label)[None])
    batch = [s[None] for s in out["segmentation"]]  # as the data loader collates one case
    labels, extras = split_target(batch, layout, 3)
    augmented = labels[0][0, 0].numpy()
    assert not np.array_equal(augmented, label)  # it was really rotated
    for scale in (0, 1):
        lab = labels[scale][0, 0].numpy()
        for c in range(3):
            expected = scipy_signed(lab, c, spacings[scale])
            np.testing.assert_allclose(extras[scale]["signed_distance"][0, c].numpy(), expected, rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(extras[scale]["distance"][0, c].numpy(), np.abs(expected), rtol=1e-5,
                                       atol=1e-5)
    assert extras[2] == {} and labels[2].dtype == torch.int16
    # maps of the label before augmentation (what precomputing them would give) are wrong here
    before = scipy_signed(label, 1, spacing)
    assert np.abs(before - extras[0]["signed_distance"][0, 1].numpy()).max() > 1.0


def test_layout_asks_only_for_what_the_loss_declares():
    weights = [0.57, 0.29, 0.14, 0.0]
    assert map_kinds_per_scale(build_loss("dice_ce"), weights) == [(), (), (), ()]
    assert map_kinds_per_scale(build_loss("boundary"), weights) == [("signed_distance",)] * 3 + [()]
    # a full-resolution term (hausdorff_dt) gets its maps at scale 0 only, its partners everywhere
    assert map_kinds_per_scale(build_loss("hausdorff_dt+region_wise"), weights) == [
        ("signed_distance", "distance"), ("signed_distance",), ("signed_distance",), ()]
    assert map_kinds_per_scale(build_loss("skeleton_recall"), None) == [("tubed_skeleton",)]


def _case(shape, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 3, *shape, generator=g), torch.randint(0, 3, (2, 1, *shape), generator=g)


def test_deep_supervision_weights_and_per_scale_extras():
    from autoseg.losses.maps import compute_maps_torch

    weights = [0.6, 0.4, 0.0]
    scales = [(16, 16), (8, 8), (4, 4)]
    outputs, targets = zip(*[_case(s, i) for i, s in enumerate(scales)])
    loss = build_loss("dice+boundary")
    extras = [compute_maps_torch(t[:, 0], 3, ("signed_distance",)) for t in targets]
    ds = DeepSupervisionLoss(loss, weights)
    expected = sum(w * loss(o, t, **e) for w, o, t, e in zip(weights, outputs, targets, extras) if w)
    torch.testing.assert_close(ds(list(outputs), list(targets), extras), expected)
    # the maps handed in are the ones used: standalone (recomputed) gives the same value
    torch.testing.assert_close(ds(list(outputs), list(targets)), expected)
    # hausdorff_dt is evaluated at scale 0 only, with the whole weight; dice at every weighted scale
    hd = build_loss("dice+hausdorff_dt")
    ds = DeepSupervisionLoss(hd, weights)
    dice, hdt = hd.components
    expected = (sum(w * dice(o, t) for w, o, t in zip(weights, outputs, targets) if w)
                + sum(weights) * hdt(outputs[0], targets[0]))
    torch.testing.assert_close(ds(list(outputs), list(targets)), expected)


def test_split_target_rejects_a_wrong_layout():
    with pytest.raises(ValueError, match="channels"):
        split_target([torch.zeros(2, 3, 4, 4)], [("distance",)], 3)


# ------------------------------------------------------------------ a real trainer
@pytest.fixture()
def nnunet_env(smoke_run, tmp_path):
    work = Path(smoke_run["work"])
    r = smoke_run["result"]
    env = {"nnUNet_raw": str(work / "nnUNet_raw"), "nnUNet_preprocessed": str(work / "nnUNet_preprocessed"),
           "nnUNet_results": str(tmp_path / "results"), "nnUNet_n_proc_DA": "2"}
    os.environ.update(env)  # conftest restores nnUNet_* after the test
    plans = json.loads((work / "nnUNet_preprocessed" / r["dataset"] / "nnUNetPlans.json").read_text())
    dataset_json = json.loads((work / "nnUNet_raw" / r["dataset"] / "dataset.json").read_text())
    return plans, dataset_json, r["configuration"]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_trainer_hands_worker_maps_to_the_loss(nnunet_env):
    from autoseg.trainers.factory import make_trainer_class

    plans, dataset_json, configuration = nnunet_env
    torch.manual_seed(0)
    trainer = make_trainer_class("boundary")(plans={**plans, "continue_training": False},
                                             configuration=configuration, fold=0, dataset_json=dataset_json,
                                             device=torch.device("cpu"))
    trainer.initial_lr = 1e-2
    trainer.on_train_start()
    try:
        from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter

        assert isinstance(trainer.dataloader_train, NonDetMultiThreadedAugmenter)  # workers on
        assert trainer.maps_layout[0] == ("signed_distance",)
        # a loss that would compute maps itself measures them in the plan's spacing, as the workers do
        assert trainer.autoseg_loss.spacing == tuple(float(s) for s in trainer.configuration_manager.spacing)
        seen = []
        original = trainer.compute_loss

        def spy(output, target, extras):
            seen.append((target, extras))
            return original(output, target, extras)

        trainer.compute_loss = spy
        trainer.on_epoch_start()
        trainer.on_train_epoch_start()
        batch = next(trainer.dataloader_train)
        losses = [float(trainer.train_step(batch)["loss"]) for _ in range(6)]
        assert all(np.isfinite(losses)) and min(losses[-2:]) < losses[0], losses
        target, extras = seen[0]
        spacings = scale_spacings(trainer.configuration_manager.spacing, trainer.configuration_manager.patch_size,
                                  trainer._get_deep_supervision_scales())
        for scale, kinds in enumerate(trainer.maps_layout):
            assert set(extras[scale]) == set(kinds)
            if not kinds:
                continue
            for b in range(target[scale].shape[0]):
                lab = target[scale][b, 0].numpy()
                # the boundary loss leaves the background out, so the workers skip its map (zeros)
                assert not extras[scale]["signed_distance"][b, 0].any()
                for c in (1, 2):
                    np.testing.assert_allclose(extras[scale]["signed_distance"][b, c].numpy(),
                                               scipy_signed(lab, c, spacings[scale]), rtol=1e-5, atol=1e-4)
        trainer.on_validation_epoch_start()
        out = trainer.validation_step(next(trainer.dataloader_val))
        assert np.isfinite(out["loss"]) and len(seen) == 7
    finally:
        trainer.on_train_end()


@pytest.mark.slow
def test_a_loss_without_maps_adds_no_transform(nnunet_env):
    from autoseg.trainers.factory import make_trainer_class

    plans, dataset_json, configuration = nnunet_env
    trainer = make_trainer_class("dice_ce")(plans={**plans, "continue_training": False},
                                            configuration=configuration, fold=0, dataset_json=dataset_json,
                                            device=torch.device("cpu"))
    trainer.initialize()
    rot, dummy_2d, initial_patch, mirror = trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
    transforms = trainer.get_training_transforms(
        trainer.configuration_manager.patch_size, rot, trainer._get_deep_supervision_scales(), mirror, dummy_2d)
    assert not any(isinstance(t, LossMapsTransform) for t in transforms.transforms)
    assert not any(trainer.maps_layout)
