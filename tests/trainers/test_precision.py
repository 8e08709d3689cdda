"""Training precision (autoseg/precision.py): the choice, the bf16 autocast of the network, a float32 loss, and
the progress picture drawn only with checkpoints."""

from __future__ import annotations

import os

import pytest
import torch
from conftest import smoke_nnunet

from autoseg import precision


def test_choice_follows_device_and_environment(monkeypatch):
    monkeypatch.delenv(precision.ENV, raising=False)
    assert precision.training_precision("cuda") == "fp16-amp"  # nnU-Net's own AMP, whatever the CPU setting
    assert precision.training_precision("mps") == "fp32"
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    assert precision.training_precision("cpu") == "bf16"
    assert precision.training_precision("cpu", "cnn_resenc") == "bf16"
    assert precision.training_precision("cpu", "transformer") == "fp32"  # auto keeps SwinUNETR in float32
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    assert precision.training_precision("cpu") == "fp32"  # emulated bf16 would be slower than float32
    monkeypatch.setenv(precision.ENV, "bf16")
    assert precision.training_precision("cpu") == "bf16"
    assert precision.training_precision("cpu", "transformer") == "bf16"  # an explicit choice wins
    monkeypatch.setenv(precision.ENV, "FP32")
    assert precision.training_precision("cpu") == "fp32"
    monkeypatch.setenv(precision.ENV, "half")
    with pytest.raises(ValueError, match="AUTOSEG_CPU_PRECISION='half'.*auto, bf16, fp32"):
        precision.training_precision("cpu")


def test_to_float32_casts_nested_reduced_floats_only():
    x = [torch.ones(2, dtype=torch.bfloat16), (torch.ones(1, dtype=torch.float16),),
         {"a": torch.ones(1, dtype=torch.int64), "b": torch.ones(1, dtype=torch.float64)}]
    y = precision.to_float32(x)
    assert y[0].dtype == torch.float32 and y[1][0].dtype == torch.float32 and isinstance(y[1], tuple)
    assert y[2]["a"].dtype == torch.int64 and y[2]["b"].dtype == torch.float64


def test_cli_rejects_an_unknown_precision(capsys):
    from autoseg.cli.main import main

    with pytest.raises(SystemExit):
        main(["plan_and_train", "--loss", "dice", "--cpu-precision", "half"])
    assert "--cpu-precision" in capsys.readouterr().err


@pytest.fixture
def smoke_trainer_factory(smoke_run, tmp_path, monkeypatch):
    with smoke_nnunet(smoke_run, tmp_path / "results", nnUNet_n_proc_DA="0") as (plans, dataset_json, r, _):

        def make(loss: str, cpu_precision: str):
            from autoseg.trainers.factory import make_trainer_class

            monkeypatch.setenv(precision.ENV, cpu_precision)
            cls = make_trainer_class(loss)
            return cls(plans={**plans, "continue_training": False}, configuration=r["configuration"], fold=0,
                       dataset_json=dataset_json, device=torch.device("cpu"))

        yield make


@pytest.mark.slow
def test_bf16_runs_the_network_in_bf16_and_the_loss_in_float32(smoke_trainer_factory):
    results = {}
    for mode in ("fp32", "bf16"):
        torch.manual_seed(0)
        trainer = smoke_trainer_factory("dice_ce", mode)
        assert trainer.training_precision == mode
        trainer.on_train_start()
        conv_dtypes, loss_dtypes = [], []
        first_conv = next(m for m in trainer.network.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d)))
        first_conv.register_forward_hook(lambda m, i, o, seen=conv_dtypes: seen.append(o.dtype))
        compute_loss = trainer.compute_loss

        def spy(output, target, extras, compute_loss=compute_loss, loss_dtypes=loss_dtypes):
            loss_dtypes.extend(o.dtype for o in (output if isinstance(output, list) else [output]))
            return compute_loss(output, target, extras)

        trainer.compute_loss = spy
        if mode == "fp32":
            batch = next(trainer.dataloader_train)
            state = {k: v.clone() for k, v in trainer.network.state_dict().items()}
        else:
            trainer.network.load_state_dict(state)  # the same weights and batch on both sides
        losses = [float(trainer.train_step(batch)["loss"]) for _ in range(3)]
        val = trainer.validation_step(batch)
        trainer.on_train_end()
        expected_conv = torch.bfloat16 if mode == "bf16" else torch.float32
        assert conv_dtypes and set(conv_dtypes) == {expected_conv}, conv_dtypes
        assert loss_dtypes and set(loss_dtypes) == {torch.float32}, loss_dtypes
        assert all(torch.isfinite(torch.tensor(losses))) and torch.isfinite(torch.as_tensor(val["loss"]))
        results[mode] = losses
    # the first step sees identical weights and data: bf16 arithmetic moves the loss by well under 5 %
    assert abs(results["bf16"][0] - results["fp32"][0]) < 0.05 * abs(results["fp32"][0]), results


@pytest.mark.slow
def test_progress_picture_is_drawn_with_checkpoints_and_at_the_end(smoke_trainer_factory, monkeypatch):
    from nnunetv2.training.logging.nnunet_logger import MetaLogger

    drawn = []
    original = MetaLogger.plot_progress_png

    def counting(self, output_folder):
        drawn.append(output_folder)
        return original(self, output_folder)

    monkeypatch.setattr(MetaLogger, "plot_progress_png", counting)
    trainer = smoke_trainer_factory("dice_ce", "fp32")
    trainer.num_epochs, trainer.num_iterations_per_epoch, trainer.num_val_iterations_per_epoch = 5, 1, 1
    trainer.save_every = 2
    trainer.console_log = False
    trainer.run_training()
    assert len(drawn) == 3  # after epochs 2 and 4 (checkpoint_latest) and 5 (the last)
    assert os.path.isfile(os.path.join(trainer.output_folder, "progress.png"))
    assert "plot_progress_png" not in vars(trainer.logger)  # the stand-in does not outlive its epoch


@pytest.mark.slow
def test_frozen_networks_in_losses_follow_the_training_precision(smoke_trainer_factory):
    # InverseForm's frozen network runs in bfloat16 when the trainer trains in it (2-4x cheaper on a CPU),
    # in float32 otherwise; a compound's component gets the same setting.
    for mode, expected in (("fp32", None), ("bf16", "bfloat16")):
        for name in ("inverseform", "dice+inverseform"):
            loss = smoke_trainer_factory(name, mode).build_autoseg_loss()
            dtypes = [m.network_dtype for m in loss.modules() if hasattr(m, "network_dtype")]
            # InverseFormLoss reports its boundary terms' setting: one value, wherever it is read
            assert dtypes and set(dtypes) == {expected}, (mode, name, dtypes)
