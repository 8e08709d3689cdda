"""The trainer factory: names, nnU-Net's own lookup, hyper-parameter variants, loss wiring."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from autoseg.losses import list_losses


def test_one_trainer_per_registered_loss():
    from autoseg.trainers.factory import registered_trainers

    trainers = registered_trainers()
    assert set(trainers) == {f"nnUNetTrainer_autoseg_{n}" for n in list_losses()}
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    for name, cls in trainers.items():
        assert issubclass(cls, nnUNetTrainer)
        assert cls.__name__ == name
        assert cls.loss_name == name.removeprefix("nnUNetTrainer_autoseg_")


def test_names_encode_hyper_parameters_and_compounds():
    from autoseg.trainers.factory import make_trainer_class, trainer_class_name

    assert trainer_class_name("combo") == "nnUNetTrainer_autoseg_combo"
    a = trainer_class_name("combo", {"alpha": 0.3})
    b = trainer_class_name("combo", {"alpha": 0.4})
    assert a != b and a.startswith("nnUNetTrainer_autoseg_combo_") and len(a) == len("nnUNetTrainer_autoseg_combo_") + 8
    assert trainer_class_name("combo", {"alpha": 0.3, "beta": 0.2}) == trainer_class_name("combo", {"beta": 0.2, "alpha": 0.3})
    assert trainer_class_name("dice+0.5*ce") == "nnUNetTrainer_autoseg_dice_plus_0p5xce"
    assert "__" not in trainer_class_name("dice+0.5*ce", {"ce.weight": [1, 2, 3]})  # nnU-Net splits folders on "__"
    assert make_trainer_class("combo", {"alpha": 0.3}) is make_trainer_class("combo", {"alpha": 0.3})


def test_bad_loss_fails_before_training():
    from autoseg.losses import UnknownLossError
    from autoseg.trainers.factory import make_trainer_class

    with pytest.raises(UnknownLossError, match="combo"):
        make_trainer_class("comb")
    with pytest.raises(ValueError, match="alpha"):
        make_trainer_class("combo", {"alpha": 1.5})
    with pytest.raises(ValueError, match="gamma"):
        make_trainer_class("combo", {"gamma": 2})


def _lookup(name: str, env_extra: dict) -> subprocess.CompletedProcess:
    code = (
        "import contextlib, io, sys\n"
        "from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name as f\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        f"    c = f({name!r})\n"
        "print(c.__name__, c.loss_name, sorted(c.loss_args.items()))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("nnUNet_")}
    env.update(env_extra)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)


def test_nnunet_lookup_finds_generated_trainers(tmp_path):
    """nnU-Net's own trainer search (what nnUNetv2_train/predict use) through nnUNet_extTrainer."""
    from autoseg.paths import extension_trainer_dir
    from autoseg.trainers.factory import record_variant

    name = record_variant(tmp_path, "combo", {"alpha": 0.25})
    env = {"nnUNet_extTrainer": str(extension_trainer_dir()), "nnUNet_results": str(tmp_path)}
    for wanted, expected in (("nnUNetTrainer_autoseg_combo", "nnUNetTrainer_autoseg_combo combo []"),
                             (name, f"{name} combo [('alpha', 0.25)]")):
        proc = _lookup(wanted, env)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert proc.stdout.strip() == expected
    assert json.loads((tmp_path / "autoseg_trainers.json").read_text())[name] == {"loss": "combo", "loss_args": {"alpha": 0.25}}
    # without the extension path nnU-Net cannot know them, and says so
    proc = _lookup("nnUNetTrainer_autoseg_combo", {})
    assert proc.returncode != 0 and "Could not find requested nnunet trainer" in proc.stderr


def test_extension_folder_is_self_contained():
    from autoseg.paths import extension_trainer_dir

    files = sorted(p.name for p in extension_trainer_dir().iterdir() if p.suffix == ".py")
    assert files == ["autoseg_trainers.py"]
    assert not (extension_trainer_dir() / "__init__.py").exists()


def test_deep_supervision_wiring_matches_nnunet(tmp_path, monkeypatch):
    """The generated trainer's loss equals nnU-Net's DC_and_CE_loss under deep supervision with an ignore label."""
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

    from autoseg.trainers.factory import make_trainer_class

    cls = make_trainer_class("dice_ce")
    trainer = cls.__new__(cls)  # only the loss wiring is exercised; no dataset needed

    class _LM:
        has_regions = False
        ignore_label = 3

    class _CM:
        batch_dice = True
        pool_op_kernel_sizes = [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]]  # 3 output scales

    trainer.label_manager, trainer.configuration_manager = _LM(), _CM()
    trainer.dataset_json, trainer.device, trainer.is_ddp = {}, torch.device("cpu"), False
    trainer.enable_deep_supervision, trainer.autoseg_loss = True, None
    trainer._do_i_compile = lambda: False
    ours = trainer._build_loss()
    weights = torch.tensor([1, 0.5, 0.0])
    ref = DeepSupervisionWrapper(
        DC_and_CE_loss({"batch_dice": True, "smooth": 1e-5, "do_bg": False, "ddp": False}, {}, weight_ce=1,
                       weight_dice=1, ignore_label=3, dice_class=MemoryEfficientSoftDiceLoss),
        (weights / weights.sum()).tolist())
    g = torch.Generator().manual_seed(0)
    logits = [torch.randn(2, 3, *s, generator=g) for s in ((8, 8, 8), (4, 4, 4), (2, 2, 2))]
    target = [torch.randint(0, 4, (2, 1, *s), generator=g).to(torch.int16) for s in ((8, 8, 8), (4, 4, 4), (2, 2, 2))]
    # nnU-Net's dice returns -DSC where ours returns 1 - DSC: a constant 1 per used scale, weights summing to 1
    assert float(ours(logits, target)) == pytest.approx(float(ref(logits, target)) + 1.0, abs=1e-5)


@pytest.mark.parametrize("loss", ["robust_t"])
def test_learnable_loss_parameters_reach_optimizer_and_checkpoint(loss):
    if loss not in list_losses():
        pytest.skip(f"{loss} is not registered yet")
    from autoseg.losses import build_loss

    module = build_loss(loss)
    assert any(True for _ in module.parameters()), f"{loss} should own a learnable parameter"


def test_trainer_tells_the_loss_each_epoch(monkeypatch):
    """The trainer calls the loss's on_epoch_start(epoch, num_epochs) before each epoch (Kervadec's ramp)."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from autoseg.losses import build_loss
    from autoseg.trainers.factory import make_trainer_class

    cls = make_trainer_class("dice+ce")
    trainer = cls.__new__(cls)  # only the hook is exercised; nnU-Net's own epoch bookkeeping is stubbed
    monkeypatch.setattr(nnUNetTrainer, "on_epoch_start", lambda self: None)
    trainer.autoseg_loss = build_loss("dice+ce")
    seen = []
    for component in trainer.autoseg_loss.components:
        monkeypatch.setattr(component, "on_epoch_start", lambda e, n, c=component: seen.append((type(c).__name__, e, n)))
    trainer.num_epochs = 7
    for epoch in (0, 1):
        trainer.current_epoch = epoch
        trainer.on_epoch_start()
    assert seen == [("DiceLoss", 0, 7), ("CrossEntropyLoss", 0, 7), ("DiceLoss", 1, 7), ("CrossEntropyLoss", 1, 7)]
