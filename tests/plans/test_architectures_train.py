"""The transformer and ResEnc networks train in nnU-Net's trainer with every loss, and predict through nnU-Net."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from autoseg.losses import list_losses
from autoseg.plans.budget import BUDGETS, add_budget_configuration
from autoseg.prepare import temporary_env

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def arch_setup(smoke_run, tmp_path_factory):
    """The smoke run's plans (copied) with smoke-budget transformer and ResEnc configurations added."""
    work = Path(smoke_run["work"])
    r = smoke_run["result"]
    tmp = tmp_path_factory.mktemp("arch")
    plans_file = tmp / "nnUNetPlans.json"
    plans_file.write_text((work / "nnUNet_preprocessed" / r["dataset"] / "nnUNetPlans.json").read_text())
    names = {a: add_budget_configuration(plans_file, "3d_fullres", BUDGETS["smoke"], arch=a)
             for a in ("transformer", "cnn_resenc")}
    env = {"nnUNet_raw": str(work / "nnUNet_raw"), "nnUNet_preprocessed": str(work / "nnUNet_preprocessed"),
           "nnUNet_results": str(tmp / "results"), "nnUNet_n_proc_DA": "0"}
    dataset_json = json.loads((work / "nnUNet_raw" / r["dataset"] / "dataset.json").read_text())
    with temporary_env(**env):
        yield json.loads(plans_file.read_text()), dataset_json, names


def _trainer(loss, plans, configuration, dataset_json, deep_supervision=True):
    from autoseg.trainers.factory import make_trainer_class

    cls = make_trainer_class(loss)
    trainer = cls(plans={**copy.deepcopy(plans), "continue_training": False}, configuration=configuration, fold=0,
                  dataset_json=dataset_json, device=torch.device("cpu"))
    trainer.console_log = False
    trainer.enable_deep_supervision = deep_supervision
    trainer.initial_lr = 1e-2
    trainer.on_train_start()
    trainer.on_train_epoch_start()
    return trainer


@pytest.mark.parametrize("loss", list_losses())
def test_every_loss_trains_the_transformer(loss, arch_setup):
    plans, dataset_json, names = arch_setup
    torch.manual_seed(0)
    trainer = _trainer(loss, plans, names["transformer"], dataset_json)
    from autoseg.plans.architectures import SwinUNETRSeg

    assert isinstance(trainer.network, SwinUNETRSeg)
    assert list(trainer.configuration_manager.patch_size) == [32, 64, 32]
    before = [p.detach().clone() for p in trainer.network.parameters()]
    batch = next(trainer.dataloader_train)
    assert len(batch["target"]) == 5  # targets down-sampled for the five outputs
    losses = [float(trainer.train_step(batch)["loss"]) for _ in range(3)]
    assert all(torch.isfinite(torch.tensor(losses))), losses
    changed = sum(not torch.equal(a, b.detach()) for a, b in zip(before, trainer.network.parameters()))
    assert changed > 0.9 * len(before)
    trainer.on_train_end()


@pytest.mark.parametrize("arch", ["transformer", "cnn_resenc"])
@pytest.mark.parametrize("deep_supervision", [True, False])
def test_architectures_fit_a_batch_with_and_without_deep_supervision(arch, deep_supervision, arch_setup):
    plans, dataset_json, names = arch_setup
    torch.manual_seed(0)
    trainer = _trainer("dice_ce", plans, names[arch], dataset_json, deep_supervision)
    batch = next(trainer.dataloader_train)
    assert isinstance(batch["target"], list) == deep_supervision
    losses = [float(trainer.train_step(batch)["loss"]) for _ in range(6)]
    assert min(losses[-2:]) < losses[0], losses
    trainer.on_train_end()


def test_transformer_trains_validates_and_predicts_through_nnunet(smoke_run, tmp_path):
    """`autoseg plan_and_train --arch transformer`, then nnUNetv2_predict with the saved model."""
    import SimpleITK as sitk

    env = {**smoke_run["env"], "nnUNet_def_n_proc": "1"}
    work = str(smoke_run["work"])
    proc = subprocess.run([sys.executable, "-m", "autoseg", "plan_and_train", "--budget", "smoke", "--arch",
                           "transformer", "--limit-cases", "10", "--work-dir", work, "--json"],
                          capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout)
    assert result["architecture"] == "transformer" and result["configuration"] == "3d_fullres_smoke_transformer"
    fold = Path(result["fold_dirs"]["0"])
    assert json.loads((fold / "autoseg.json").read_text())["architecture"] == "transformer"
    assert (fold / "validation" / "summary.json").is_file()

    out = subprocess.run([sys.executable, "-m", "autoseg", "nnunet-env", "--work-dir", work],
                         capture_output=True, text=True, env=env, check=True).stdout
    for line in out.splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        env[key] = value.strip("'")
    images = Path(env["nnUNet_raw"]) / result["dataset"] / "imagesTr"
    inp = tmp_path / "in"
    inp.mkdir()
    case = sorted(images.glob("*_0000.nii.gz"))[0]
    os.symlink(case, inp / case.name)
    bindir = Path(sys.executable).parent
    pred = subprocess.run([str(bindir / "nnUNetv2_predict"), "-i", str(inp), "-o", str(tmp_path / "out"), "-d",
                           result["dataset"], "-c", result["configuration"], "-tr", result["trainer"], "-f", "0",
                           "-device", "cpu", "--disable_tta", "-npp", "1", "-nps", "1"],
                          capture_output=True, text=True, env=env, timeout=900)
    assert pred.returncode == 0, (pred.stdout[-3000:], pred.stderr[-3000:])
    out_file = tmp_path / "out" / case.name.replace("_0000", "")
    assert sitk.ReadImage(str(out_file)).GetSize() == sitk.ReadImage(str(case)).GetSize()
