"""Budget configurations added to nnU-Net plans: inherited, narrowed, read back by nnU-Net itself."""

from __future__ import annotations

import json

import pytest

from autoseg.plans.budget import BUDGETS, Budget, add_budget_configuration


def _plans(tmp_path):
    arch = {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
            "arch_kwargs": {"n_stages": 4, "features_per_stage": [32, 64, 128, 256],
                            "conv_op": "torch.nn.modules.conv.Conv3d", "kernel_sizes": [[3, 3, 3]] * 4,
                            "strides": [[1, 1, 1]] + [[2, 2, 2]] * 3, "n_conv_per_stage": [2] * 4,
                            "n_conv_per_stage_decoder": [2] * 3, "conv_bias": True,
                            "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
                            "norm_op_kwargs": {"eps": 1e-5, "affine": True}, "dropout_op": None,
                            "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
                            "nonlin_kwargs": {"inplace": True}},
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}
    plans = {"dataset_name": "Dataset001_X", "plans_name": "nnUNetPlans", "original_median_spacing_after_transp": [1, 1, 1],
             "original_median_shape_after_transp": [40, 50, 40], "image_reader_writer": "SimpleITKIO",
             "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
             "configurations": {"3d_fullres": {"data_identifier": "nnUNetPlans_3d_fullres",
                                               "preprocessor_name": "DefaultPreprocessor", "batch_size": 2,
                                               "patch_size": [40, 56, 40], "spacing": [1, 1, 1],
                                               "median_image_size_in_voxels": [37, 50, 36],
                                               "normalization_schemes": ["ZScoreNormalization"],
                                               "use_mask_for_norm": [False], "architecture": arch,
                                               "batch_dice": False}},
             "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
             "foreground_intensity_properties_per_channel": {}}
    path = tmp_path / "nnUNetPlans.json"
    path.write_text(json.dumps(plans))
    return path


def test_quick_configuration_inherits_and_narrows(tmp_path):
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    path = _plans(tmp_path)
    name = add_budget_configuration(path, "3d_fullres", BUDGETS["quick"])
    assert name == "3d_fullres_quick"
    plans = json.loads(path.read_text())
    entry = plans["configurations"][name]
    assert entry["inherits_from"] == "3d_fullres"
    cm = PlansManager(plans).get_configuration(name)
    assert cm.data_identifier == "nnUNetPlans_3d_fullres"  # reuses the preprocessed data
    assert cm.patch_size == [40, 56, 40]
    feats = cm.network_arch_init_kwargs["features_per_stage"]
    assert feats == [16, 32, 64, 128]
    assert cm.configuration["autoseg"]["budget"]["epochs"] == BUDGETS["quick"].epochs
    # the base configuration is untouched
    assert plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]["features_per_stage"] == [32, 64, 128, 256]


def test_idempotent_and_standard_is_nnunet_own(tmp_path):
    path = _plans(tmp_path)
    add_budget_configuration(path, "3d_fullres", BUDGETS["quick"])
    first = path.read_text()
    add_budget_configuration(path, "3d_fullres", BUDGETS["quick"])
    assert path.read_text() == first
    assert add_budget_configuration(path, "3d_fullres", BUDGETS["standard"]) == "3d_fullres"
    assert set(json.loads(path.read_text())["configurations"]) == {"3d_fullres", "3d_fullres_quick"}


def test_explicit_schedule_gets_its_own_configuration(tmp_path):
    path = _plans(tmp_path)
    b = BUDGETS["quick"].with_schedule(epochs=3, iterations=7)
    name = add_budget_configuration(path, "3d_fullres", b)
    assert name == "3d_fullres_quick_e3i7"
    block = json.loads(path.read_text())["configurations"][name]["autoseg"]["budget"]
    assert block["epochs"] == 3 and block["iterations_per_epoch"] == 7
    assert BUDGETS["standard"].with_schedule(epochs=5).iterations_per_epoch == 250


@pytest.mark.parametrize("bad", [0, -1, 2.5])
def test_bad_schedule_rejected(bad):
    with pytest.raises(ValueError, match="epochs must be a positive integer"):
        Budget("x").with_schedule(epochs=bad)


def test_unknown_base_configuration(tmp_path):
    with pytest.raises(ValueError, match="configuration '2d' is not in"):
        add_budget_configuration(_plans(tmp_path), "2d", BUDGETS["quick"])
