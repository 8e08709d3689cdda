"""Budget-aware planner: nnU-Net's invariants on real nnU-Net plans, the time and memory budget honoured, overrides."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch

from autoseg.plans.cost import MachineCosts, count_network
from autoseg.plans.planner import (
    MAX_BATCH_FRACTION,
    TRAIN_SHARE,
    PlanError,
    PlanRequest,
    configuration_entry,
    parse_duration,
    parse_int_list,
    parse_memory,
    patch_divisors,
    plan_configuration,
)
from autoseg.prepare import temporary_env


def fake_costs(conv=2e-11, element=3e-10, data=1e-8) -> MachineCosts:
    """A machine with fixed, known speeds (no benchmark), so plans are deterministic."""
    return MachineCosts(device="cpu", threads=1, conv_s_per_flop={d: {"8": 2 * conv, "64": conv} for d in ("2", "3")},
                        matmul_s_per_flop={"4": 4 * conv, "64": conv}, s_per_softmax_element=element,
                        s_per_element=element, s_per_operation=1e-6, data_s_per_voxel={"2": data, "3": data},
                        fixed_s=0.01, seconds_spent=0.0, machine="test", torch_version=torch.__version__)


# ------------------------------------------------------------------ nnU-Net's own plans for synthetic data
def nnunet_plans(root, name, spacings, shapes, n_cases=20, modality="MRI"):
    """Run nnU-Net's ExperimentPlanner on a dataset described only by its fingerprint."""

    import SimpleITK as sitk

    raw = root / "raw" / name
    pre = root / "pre" / name
    (raw / "imagesTr").mkdir(parents=True)
    (raw / "labelsTr").mkdir()
    pre.mkdir(parents=True)
    dims = len(shapes[0])
    for i in range(n_cases):  # the planner opens only the first image, to pick a reader
        img = sitk.GetImageFromArray(np.zeros((4,) * dims, np.float32))
        sitk.WriteImage(img, str(raw / "imagesTr" / f"c{i:03d}_0000.nii.gz"))
        sitk.WriteImage(sitk.Cast(img, sitk.sitkUInt8), str(raw / "labelsTr" / f"c{i:03d}.nii.gz"))
    (raw / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": modality}, "labels": {"background": 0, "a": 1, "b": 2},
        "numTraining": n_cases, "file_ending": ".nii.gz"}))
    props = {"max": 1.0, "mean": 0.0, "median": 0.0, "min": -1.0, "percentile_00_5": -1.0,
             "percentile_99_5": 1.0, "std": 1.0}
    (pre / "dataset_fingerprint.json").write_text(json.dumps({
        "spacings": [list(spacings)] * n_cases,
        "shapes_after_crop": [list(s) for s in shapes] * (n_cases // len(shapes)),
        "foreground_intensity_properties_per_channel": {"0": props}, "median_relative_size_after_cropping": 1.0}))
    env = {"nnUNet_raw": str(root / "raw"), "nnUNet_preprocessed": str(root / "pre"),
           "nnUNet_results": str(root / "res")}
    with temporary_env(**env):
        from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner

        ExperimentPlanner(name).plan_experiment()
    return json.loads((pre / "nnUNetPlans.json").read_text())


def assert_invariants(plans, base_name, plan, n_cases, request):
    base = plans["configurations"][base_name]
    strides = plan.strides
    divisors = patch_divisors(strides)
    assert all(p % d == 0 for p, d in zip(plan.patch_size, divisors)), (plan.patch_size, divisors)
    if plan.arch == "transformer":
        assert all(p % 32 == 0 for p in plan.patch_size)
    else:
        # nnU-Net's anisotropic handling kept: the planned strides are a prefix of nnU-Net's
        assert strides == base["architecture"]["arch_kwargs"]["strides"][:len(strides)]
        assert all(p <= q for p, q in zip(plan.patch_size, base["patch_size"]))
    if request.batch_size is None:
        voxels = np.prod(base["median_image_size_in_voxels"] if len(plan.patch_size) == 3
                         else plans["original_median_shape_after_transp"]) * n_cases
        cap = max(2, round(MAX_BATCH_FRACTION * voxels / np.prod(plan.patch_size)), base["batch_size"])
        assert 2 <= plan.batch_size <= cap
    assert plan.iterations >= 1


ANISO = dict(name="Dataset901_Aniso", spacings=(5.0, 0.8, 0.8), shapes=[(20, 240, 200), (24, 256, 230)])
HIPPO_LIKE = dict(name="Dataset902_Iso", spacings=(1.0, 1.0, 1.0), shapes=[(36, 50, 35), (38, 52, 36)])


@pytest.fixture(scope="module")
def synthetic_plans(tmp_path_factory):
    """nnU-Net's plans of a thin-slice (5 x 0.8 x 0.8 mm) and an isotropic Hippocampus-sized dataset."""
    return {d["name"]: nnunet_plans(tmp_path_factory.mktemp(d["name"]), **d) for d in (ANISO, HIPPO_LIKE)}


@pytest.mark.parametrize("data", [ANISO, HIPPO_LIKE], ids=["anisotropic", "isotropic"])
@pytest.mark.parametrize("arch", ["cnn", "cnn_resenc", "transformer"])
def test_plans_keep_nnunet_invariants(data, arch, synthetic_plans):
    plans = copy.deepcopy(synthetic_plans[data["name"]])
    if data is ANISO:
        # nnU-Net does not pool the thin axis at first: the planner must not either
        assert plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]["strides"][1][0] == 1
    for base in ("3d_fullres", "2d"):
        request = PlanRequest(arch=arch, time_budget_s=8 * 3600)
        plan = plan_configuration(plans, base, request, fake_costs(), 20, 1, 3)
        assert_invariants(plans, base, plan, 20, request)
        # nnU-Net can load the configuration and build the network at the planned patch
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        plans["configurations"][plan.name] = configuration_entry(plan, fake_costs(), request)
        cm = PlansManager(plans).get_configuration(plan.name)
        assert list(cm.patch_size) == plan.patch_size and cm.batch_size == plan.batch_size
        assert cm.data_identifier == plans["configurations"][base]["data_identifier"]
        assert cm.configuration["autoseg"]["budget"]["epochs"] == plan.epochs


# ------------------------------------------------------------------ the budget is honoured
@pytest.mark.parametrize("budget_s", [1200, 3600, 4 * 3600])
def test_time_budget_is_honoured_by_the_cost_model(budget_s, synthetic_plans):
    plans = synthetic_plans[HIPPO_LIKE["name"]]
    request = PlanRequest(arch="cnn", time_budget_s=budget_s, min_iterations=500)
    plan = plan_configuration(plans, "3d_fullres", request, fake_costs(), 20, 1, 3)
    training = plan.estimated_seconds_per_iteration * plan.iterations
    assert training <= budget_s * TRAIN_SHARE
    assert plan.iterations >= 500
    # the schedule uses the budget: less than one epoch is left over
    assert training + plan.estimated_seconds_per_iteration * plan.iterations_per_epoch >= budget_s * TRAIN_SHARE * 0.97


def test_smaller_budget_gives_cheaper_network_and_grid_divides_it(synthetic_plans):
    plans = synthetic_plans[HIPPO_LIKE["name"]]
    costs = fake_costs()
    big = plan_configuration(plans, "3d_fullres", PlanRequest(time_budget_s=8 * 3600), costs, 20, 1, 3)
    small = plan_configuration(plans, "3d_fullres", PlanRequest(time_budget_s=1800), costs, 20, 1, 3)
    grid = plan_configuration(plans, "3d_fullres", PlanRequest(time_budget_s=8 * 3600, runs=16), costs, 20, 1, 3)
    assert small.estimated_seconds_per_iteration < big.estimated_seconds_per_iteration
    assert grid.estimated_seconds_per_iteration * grid.iterations <= 8 * 3600 / 16 * TRAIN_SHARE
    assert big.features_per_stage == plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"][
        "features_per_stage"]


def test_budget_too_small_and_memory_too_small_are_clear(synthetic_plans):
    plans = synthetic_plans[HIPPO_LIKE["name"]]
    with pytest.raises(PlanError, match=r"nothing fits the budget.*s per run \(budget 10 s per run\)"):
        plan_configuration(plans, "3d_fullres", PlanRequest(time_budget_s=10), fake_costs(), 20, 1, 3)
    with pytest.raises(PlanError, match=r"nothing fits the budget.*GiB \(limit 0.00 GiB\)"):
        plan_configuration(plans, "3d_fullres", PlanRequest(memory_bytes=1000), fake_costs(), 20, 1, 3)


def test_memory_limit_shrinks_the_plan(synthetic_plans):
    plans = synthetic_plans[HIPPO_LIKE["name"]]
    free = plan_configuration(plans, "3d_fullres", PlanRequest(memory_bytes=64 * 2**30), fake_costs(), 20, 1, 3)
    tight = plan_configuration(plans, "3d_fullres", PlanRequest(memory_bytes=free.estimated_memory_bytes * 0.6),
                               fake_costs(), 20, 1, 3)
    assert tight.estimated_memory_bytes <= free.estimated_memory_bytes * 0.6


# ------------------------------------------------------------------ overrides
def test_overrides_are_used_and_recorded(synthetic_plans):
    plans = synthetic_plans[HIPPO_LIKE["name"]]
    request = PlanRequest(patch_size=[32, 48, 32], batch_size=3, features=[8, 16, 32, 64])
    plan = plan_configuration(plans, "3d_fullres", request, fake_costs(), 20, 1, 3)
    assert (plan.patch_size, plan.batch_size, plan.features_per_stage) == ([32, 48, 32], 3, [8, 16, 32, 64])
    entry = configuration_entry(plan, fake_costs(), request)
    assert entry["autoseg"]["overrides"] == {"patch_size": [32, 48, 32], "batch_size": 3, "features": [8, 16, 32, 64]}
    assert any("overridden" in r for r in plan.reasons)


@pytest.mark.parametrize("request_kw, match", [
    ({"patch_size": [30, 48, 32]}, r"axis 0 \(30\) must be divisible by 8.*nearest valid: 32"),
    ({"patch_size": [32, 48]}, "has 2 axes"),
    ({"arch": "transformer", "patch_size": [40, 64, 32]}, "divisible by 32"),
    ({"arch": "transformer", "features": [16]}, "multiple of 12"),
    ({"features": [8, 16]}, "lists 2 stages"),
    ({"batch_size": 0}, "at least 1"),
    ({"arch": "vit"}, "unknown architecture"),
])
def test_bad_overrides_rejected(request_kw, match, synthetic_plans):
    plans = synthetic_plans[HIPPO_LIKE["name"]]
    with pytest.raises(ValueError, match=match):
        plan_configuration(plans, "3d_fullres", PlanRequest(**request_kw), fake_costs(), 20, 1, 3)


@pytest.mark.parametrize("text, seconds", [("600", 600), ("90s", 90), ("10m", 600), ("1.5h", 5400), ("1h30m", 5400)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["soon", "10 minutes", "0", "-5m"])
def test_parse_duration_rejects(bad):
    with pytest.raises(PlanError):
        parse_duration(bad)


def test_parse_memory_and_lists():
    assert parse_memory("8G") == 8 * 2**30 and parse_memory("512MB") == 512 * 2**20 and parse_memory("100") == 100
    with pytest.raises(PlanError, match="cannot read the memory"):
        parse_memory("lots")
    assert parse_int_list("40x56x40", "--patch-size") == [40, 56, 40]
    assert parse_int_list("16,32", "--features") == [16, 32]
    with pytest.raises(PlanError, match="--patch-size"):
        parse_int_list("40xa", "--patch-size")


# ------------------------------------------------------------------ the cost model's counting
def test_conv_flops_counted_as_by_hand():
    conv = torch.nn.Conv3d(4, 8, 3, padding=1, bias=False)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = conv

        def forward(self, x):
            return self.conv(x.requires_grad_())

    counts = count_network(Net(), (2, 4, 6, 6, 6))
    forward = 2 * 4 * 8 * 27 * (2 * 6 * 6 * 6)  # multiply-adds x 2 per output voxel
    # backward: gradient of the input and of the weight, each as much as the forward pass
    assert counts.conv_flops["3"] == {4: 3 * forward}
    assert counts.parameters == 4 * 8 * 27


def test_seconds_are_the_priced_counts():
    costs = fake_costs(conv=1e-11, element=1e-9, data=1e-8)
    counts = count_network(torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU()), (2, 1, 16, 16))
    parts = costs.seconds(counts, data_voxels=512, dims=2)
    flops = counts.conv_flops["2"][1]
    # width 1 lies below the benchmarked 8: the rate of the narrowest benchmark applies
    assert math.isclose(parts["convolutions"], flops * 2e-11)
    assert math.isclose(parts["elementwise"], (counts.elements + 6 * counts.parameters) * 1e-9)
    assert math.isclose(parts["augmentation"], 512 * 1e-8)
    assert math.isclose(parts["per_operation"], counts.operations * 1e-6) and counts.operations > 4
    assert math.isclose(parts["total"], sum(v for k, v in parts.items() if k != "total"))
    # log-linear interpolation between benchmarked widths
    assert math.isclose(costs.conv_rate("3", 16 * 2 ** 0.5 * 2 ** 0.5 // 1), costs.conv_rate("3", 32))
    assert math.isclose(costs.conv_rate("3", int(8 * 8 ** 0.5 + 0.5)), 1.5e-11, rel_tol=1e-2)


# ------------------------------------------------------------------ the chosen network is timed for real
def test_a_candidate_the_model_accepts_but_the_clock_does_not_is_passed_over(synthetic_plans):
    # The cost model underprices some networks (SwinUNETR's attention by 1.4-2x, docs/planning.md): the planner
    # times the step of each candidate the model accepts and keeps the first that still fits in the timed seconds.
    plans = synthetic_plans[HIPPO_LIKE["name"]]
    request = PlanRequest(arch="cnn", time_budget_s=3600, min_iterations=500)
    model_only = plan_configuration(plans, "3d_fullres", request, fake_costs(), 20, 1, 3)
    calls = []

    def timer(block, patch, batch, arch):
        calls.append((block["arch_kwargs"]["features_per_stage"][0], tuple(patch), batch, arch))
        # the model's first choice is 10x slower than priced; any other candidate costs 0.2 s per step
        return 10 * model_only.estimated_seconds_per_iteration if len(calls) == 1 else 0.2

    timed = plan_configuration(plans, "3d_fullres", request, fake_costs(), 20, 1, 3, timer=timer)
    assert calls[0] == (model_only.features_per_stage[0], tuple(model_only.patch_size), model_only.batch_size, "cnn")
    assert len(calls) == 2  # the second candidate fitted once timed
    assert (timed.features_per_stage, timed.patch_size, timed.batch_size) != (
        model_only.features_per_stage, model_only.patch_size, model_only.batch_size)
    parts = timed.estimated_seconds_by_part
    assert parts["network_timed"] == 0.2 and "convolutions" not in parts
    # the data pipeline and the fixed cost stay priced by the model, and the schedule fills the budget with the
    # timed seconds
    assert timed.estimated_seconds_per_iteration == pytest.approx(0.2 + parts["augmentation"] + parts["fixed"], abs=1e-3)
    assert timed.iterations * timed.estimated_seconds_per_iteration <= 3600 * TRAIN_SHARE
    assert any("network timed on this machine" in r and "1 faster-priced candidate(s)" in r for r in timed.reasons)
    # no time budget: the first candidate that fits the memory is timed once and kept, whatever its time
    calls.clear()
    free = plan_configuration(plans, "3d_fullres", PlanRequest(arch="cnn"), fake_costs(), 20, 1, 3, timer=timer)
    assert len(calls) == 1 and free.estimated_seconds_by_part["network_timed"] > 1


def test_a_training_step_is_timed_and_trains():
    from autoseg.plans.cost import time_training_step

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 3, 1))
    before = [p.detach().clone() for p in net.parameters()]
    seconds = time_training_step(net, 2, [32, 32], 1, 3, "cpu", "fp32", steps=2)
    assert 0 < seconds < 5
    assert all(not torch.equal(a, b) for a, b in zip(before, net.parameters()))  # SGD stepped


def test_no_candidate_reaching_the_floor_falls_back_to_the_fastest(synthetic_plans):
    # The floor (2000 by default) is what the planner aims for; a budget too short for it still gets the
    # fastest candidate if that reaches HARD_MIN_ITERATIONS, and an error only below that.
    from autoseg.plans.planner import HARD_MIN_ITERATIONS, MIN_ITERATIONS

    assert PlanRequest().min_iterations == MIN_ITERATIONS == 2000 and HARD_MIN_ITERATIONS == 500
    plans = synthetic_plans[HIPPO_LIKE["name"]]
    costs = fake_costs()
    usual = plan_configuration(plans, "3d_fullres", PlanRequest(time_budget_s=8 * 3600), costs, 20, 1, 3)
    assert usual.iterations >= 2000 and not any("no candidate reaches" in r for r in usual.reasons)
    out_of_reach = plan_configuration(plans, "3d_fullres", PlanRequest(time_budget_s=8 * 3600, min_iterations=10**9),
                                      costs, 20, 1, 3)
    assert any("no candidate reaches 1000000000 iterations; the fastest" in r for r in out_of_reach.reasons)
    assert out_of_reach.estimated_seconds_per_iteration < usual.estimated_seconds_per_iteration
    assert out_of_reach.iterations >= HARD_MIN_ITERATIONS
    # the fastest candidate is the cheapest of all: a smaller patch or narrower network cannot be had
    smallest_patch = min(np.prod(p) for p in [out_of_reach.patch_size, usual.patch_size])
    assert np.prod(out_of_reach.patch_size) == smallest_patch
    assert out_of_reach.features_per_stage[0] <= usual.features_per_stage[0]
