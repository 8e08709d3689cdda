"""Every registered loss trains in a real nnU-Net trainer: the loss falls and a checkpoint round-trips."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import smoke_nnunet

from autoseg.losses import list_losses

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def nnunet_setup(smoke_run, tmp_path_factory):
    results = tmp_path_factory.mktemp("results")
    with smoke_nnunet(smoke_run, results, nnUNet_n_proc_DA="0") as (plans, dataset_json, r, _):
        yield plans, dataset_json, r["configuration"], results


@pytest.mark.parametrize("loss", list_losses())
def test_loss_trains_and_checkpoints(loss, nnunet_setup):
    from autoseg.trainers.factory import make_trainer_class

    plans, dataset_json, configuration, results = nnunet_setup
    torch.manual_seed(0)
    cls = make_trainer_class(loss)
    trainer = cls(plans={**plans, "continue_training": False}, configuration=configuration, fold=0,
                  dataset_json=dataset_json, device=torch.device("cpu"))
    trainer.initial_lr = 1e-2
    trainer.on_train_start()
    trainer.on_train_epoch_start()
    batch = next(trainer.dataloader_train)  # one fixed batch, fitted a few steps: the loss must fall
    losses = [float(trainer.train_step(batch)["loss"]) for _ in range(8)]
    assert all(torch.isfinite(torch.tensor(losses))), losses
    assert min(losses[-3:]) < losses[0], f"{loss}: {losses}"
    ckpt = Path(trainer.output_folder) / "checkpoint_test.pth"
    trainer.save_checkpoint(str(ckpt))
    saved = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert saved["trainer_name"] == cls.__name__
    if any(True for _ in trainer.autoseg_loss.parameters()):
        # learnable loss parameters were optimised and are restored from the checkpoint
        state = trainer.autoseg_loss.state_dict()
        assert set(saved["autoseg_loss_state"]) == set(state)
        fresh = cls(plans={**plans, "continue_training": False}, configuration=configuration, fold=0,
                    dataset_json=dataset_json, device=torch.device("cpu"))
        fresh.load_checkpoint(str(ckpt))
        for k, v in fresh.autoseg_loss.state_dict().items():
            assert torch.equal(v, state[k]), k
    trainer.on_train_end()
