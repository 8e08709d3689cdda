"""InverseForm's shipped inverse-transformation network recovers known affine transforms; the command regenerates it."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest
import torch

from autoseg.losses.boundary import _inverseform_net as itn


def test_shipped_weights_are_small_and_made_by_the_command_defaults():
    assert itn.WEIGHTS.is_file()
    assert itn.WEIGHTS.stat().st_size < 1_000_000
    meta = itn.load_meta()
    assert meta["config"] == asdict(itn.TrainConfig()), "shipped weights were not made by `autoseg train-inverseform`"


def test_shipped_network_recovers_known_transforms_on_held_out_pairs():
    net = itn.load()
    # Held-out: a generator seed the training never used, and pairs drawn fresh here.
    g = torch.Generator().manual_seed(987)
    moved, fixed, truth = itn.synthetic_pairs(1000, g)
    with torch.no_grad():
        est = net(moved, fixed) - net(fixed, fixed)  # the loss's calibrated identity
    error = (est - truth).norm(dim=1).mean()
    baseline = truth.norm(dim=1).mean()  # always answering "identity"
    assert error < 0.5 * baseline, (float(error), float(baseline))
    # larger transforms get larger estimates: the distance the loss uses is ordered
    small, large = truth.norm(dim=1) < baseline / 2, truth.norm(dim=1) > 1.5 * baseline
    assert est.norm(dim=1)[small].mean() < est.norm(dim=1)[large].mean()


def test_synthetic_pairs_are_what_they_claim():
    g = torch.Generator().manual_seed(0)
    moved, fixed, truth = itn.synthetic_pairs(16, g)
    assert moved.shape == fixed.shape == (16, 1, itn.TILE, itn.TILE) and truth.shape == (16, 6)
    assert set(torch.unique(fixed).tolist()) <= {0.0, 1.0} and fixed.sum() > 0
    # the identity transform leaves a map unchanged (affine_grid/grid_sample convention)
    ident = itn.IDENTITY.reshape(1, 2, 3).repeat(16, 1, 1)
    torch.testing.assert_close(itn.warp(fixed, ident), fixed, atol=1e-5, rtol=0)
    torch.testing.assert_close(itn.warp(fixed, truth.reshape(16, 2, 3) + ident), moved, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_command_regenerates_weights_deterministically(tmp_path):
    from conftest import autoseg_cli

    outs = []
    for name in ("a.pt", "b.pt"):
        proc = autoseg_cli("train-inverseform", "--steps", "25", "--batch", "16", "--eval-pairs", "50", "--quiet",
                           "--out", str(tmp_path / name), timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
        report = json.loads(proc.stdout)
        assert report["pairs"] == 50 and report["mean_error"] > 0
        outs.append(torch.load(tmp_path / name, weights_only=True))
    assert outs[0]["meta"]["config"]["steps"] == 25
    for k, v in outs[0]["state_dict"].items():
        assert torch.equal(v, outs[1]["state_dict"][k]), f"{k} differs between two runs of the same command"
    net = itn.load(tmp_path / "a.pt")
    assert net(torch.zeros(2, 1, 32, 32), torch.zeros(2, 1, 32, 32)).shape == (2, 6)
    bad = autoseg_cli("train-inverseform", "--steps", "0", "--out", str(tmp_path / "c.pt"))
    assert bad.returncode == 2 and "--steps" in bad.stderr
