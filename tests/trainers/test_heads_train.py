"""Losses with auxiliary heads train in a real nnU-Net trainer; the checkpoint stays plain nnU-Net and predicts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import SimpleITK as sitk
import torch
from conftest import smoke_nnunet

from autoseg.trainers.heads import CHECKPOINT_KEY

pytestmark = pytest.mark.slow

HEAD_LOSSES = {"boundary_aware": {"distance_bins": 5}, "inverseform": {"boundary": 1},
               "conditional_boundary": {"embedding": 16}}


@pytest.fixture(scope="module")
def nnunet_setup(smoke_run, tmp_path_factory):
    from autoseg.paths import extension_trainer_dir

    with smoke_nnunet(smoke_run, tmp_path_factory.mktemp("results_heads"), nnUNet_n_proc_DA="0",
                      nnUNet_extTrainer=str(extension_trainer_dir())) as setup:
        yield setup


def _trainer(loss, plans, dataset_json, configuration):
    from autoseg.trainers.factory import make_trainer_class

    cls = make_trainer_class(loss)
    return cls(plans={**plans, "continue_training": False}, configuration=configuration, fold=0,
               dataset_json=dataset_json, device=torch.device("cpu"))


@pytest.mark.parametrize("loss", sorted(HEAD_LOSSES))
def test_heads_train_and_checkpoint_stays_plain_nnunet(loss, nnunet_setup, tmp_path):
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    plans, dataset_json, r, env = nnunet_setup
    torch.manual_seed(0)
    trainer = _trainer(loss, plans, dataset_json, r["configuration"])
    trainer.initial_lr = 1e-2
    trainer.on_train_start()
    heads = trainer.autoseg_heads
    assert heads is not None and heads.spec == HEAD_LOSSES[loss]
    head_ids = {id(p) for p in heads.parameters()}
    assert head_ids <= {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}, "heads not optimised"
    before = {k: v.clone() for k, v in heads.state_dict().items()}
    trainer.on_train_epoch_start()
    batch = next(trainer.dataloader_train)
    losses = [float(trainer.train_step(batch)["loss"]) for _ in range(8)]
    assert all(torch.isfinite(torch.tensor(losses))), losses
    assert min(losses[-3:]) < losses[0], f"{loss}: {losses}"
    assert any(not torch.equal(before[k], v) for k, v in heads.state_dict().items()), "the heads did not train"

    ckpt = Path(trainer.output_folder) / "checkpoint_test.pth"
    trainer.save_checkpoint(str(ckpt))
    saved = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert saved[CHECKPOINT_KEY]["spec"] == HEAD_LOSSES[loss]
    # The network weights load, strictly, into a stock nnU-Net network built from the plans.
    plain = nnUNetTrainer.build_network_architecture(
        trainer.plans_manager, trainer.configuration_manager, trainer.num_input_channels,
        trainer.label_manager.num_segmentation_heads, enable_deep_supervision=False)
    plain.load_state_dict(saved["network_weights"], strict=True)
    assert not any("head" in k and "seg_layers" not in k for k in saved["network_weights"])
    # Resume: a fresh trainer gets the trained heads back.
    fresh = _trainer(loss, plans, dataset_json, r["configuration"])
    fresh.load_checkpoint(str(ckpt))
    for k, v in fresh.autoseg_heads.state_dict().items():
        assert torch.equal(v, heads.state_dict()[k]), k
    trainer.on_train_end()  # writes checkpoint_final.pth
    with torch.no_grad():
        trainer.network(batch["data"][:1])
    assert heads.pop_outputs() == {}, "after training, forward passes (inference) must compute no head"
    if loss == "inverseform":
        _predict_with_nnunet(trainer, r, env, tmp_path)


def _predict_with_nnunet(trainer, r, env, tmp_path):
    """nnU-Net's own ``nnUNetv2_predict`` on the checkpoint of a model trained with heads."""
    images = Path(env["nnUNet_raw"]) / r["dataset"] / "imagesTr"
    inp = tmp_path / "in"
    inp.mkdir()
    case = sorted(images.glob("*_0000.nii.gz"))[0]
    os.symlink(case, inp / case.name)
    bindir = Path(sys.executable).parent
    run_env = {**os.environ, **env}
    pred = subprocess.run([str(bindir / "nnUNetv2_predict"), "-i", str(inp), "-o", str(tmp_path / "out"), "-d",
                           r["dataset"], "-c", r["configuration"], "-tr", type(trainer).__name__, "-f", "0",
                           "-device", "cpu", "--disable_tta", "-npp", "1", "-nps", "1"],
                          capture_output=True, text=True, env=run_env, timeout=600)
    assert pred.returncode == 0, (pred.stdout[-3000:], pred.stderr[-3000:])
    out_file = tmp_path / "out" / case.name.replace("_0000", "")
    assert sitk.ReadImage(str(out_file)).GetSize() == sitk.ReadImage(str(case)).GetSize()
