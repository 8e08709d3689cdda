"""InverseForm's inverse-transformation network: a small CNN trained here on synthetic boundary maps under random affine transforms.

Borse et al. (CVPR 2021) train a network that, fed two boundary maps, regresses the affine transform
between them, then freeze it and use the distance of its estimate from the identity as a loss. Their
weights cannot be downloaded here, so autoseg trains its own, deterministically, in a few minutes on a
CPU (``autoseg train-inverseform``), and ships them as ``inverseform_net.pt`` (about 0.4 MB).

Training data: random 32x32 label maps (ellipses and half-planes), their boundary maps (the same
morphology the losses use), a random affine transform theta (rotation, anisotropic scale, shear,
translation), and the pair ``(warp_theta(b), b)``; the network regresses ``theta - I`` (the 2x3
matrix, 6 numbers, in the normalised coordinates of ``torch.nn.functional.affine_grid``).
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from autoseg.losses.boundary._morphology import label_boundary

TILE = 32
WEIGHTS = Path(__file__).with_name("inverseform_net.pt")
IDENTITY = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0])


class InverseTransformNet(nn.Module):
    """``(moved, fixed)`` 32x32 boundary tiles ``[N, 1, 32, 32]`` each -> ``theta - I`` ``[N, 6]``."""

    def __init__(self, width: int = 16):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(2, w, 3, padding=1), nn.ReLU(),
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), nn.ReLU(),  # 16
            nn.Conv2d(2 * w, 2 * w, 3, stride=2, padding=1), nn.ReLU(),  # 8
            nn.Conv2d(2 * w, 4 * w, 3, stride=2, padding=1), nn.ReLU(),  # 4
        )
        self.regressor = nn.Sequential(nn.Flatten(), nn.Linear(4 * w * 16, 64), nn.ReLU(), nn.Linear(64, 6))
        self.width = w

    def forward(self, moved: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        return self.regressor(self.features(torch.cat([moved, fixed], 1)))


@dataclass(frozen=True)
class TransformRange:
    """Ranges of the random affine transforms (angles in degrees, translations in units of half a tile)."""

    rotation: float = 20.0
    scale: float = 0.15
    shear: float = 0.15
    translation: float = 0.2


def random_thetas(n: int, g: torch.Generator, r: TransformRange = TransformRange()) -> torch.Tensor:
    """``[n, 2, 3]`` affine matrices: rotation @ shear @ anisotropic scale, plus a translation."""
    u = lambda: 2 * torch.rand(n, generator=g) - 1  # noqa: E731  (uniform in [-1, 1])
    a = u() * math.radians(r.rotation)
    sx, sy, sh = 1 + u() * r.scale, 1 + u() * r.scale, u() * r.shear
    rot = torch.stack([torch.stack([a.cos(), -a.sin()], -1), torch.stack([a.sin(), a.cos()], -1)], -2)
    shear = torch.eye(2).repeat(n, 1, 1)
    shear[:, 0, 1] = sh
    scale = torch.diag_embed(torch.stack([sx, sy], -1))
    lin = rot @ shear @ scale
    t = torch.stack([u(), u()], -1) * r.translation
    return torch.cat([lin, t.unsqueeze(-1)], -1)


def random_boundaries(n: int, g: torch.Generator, size: int = TILE) -> torch.Tensor:
    """``[n, 1, size, size]`` 0/1 boundary maps of random label maps (1 to 3 ellipses over a half-plane or not)."""
    ax = torch.linspace(-1, 1, size)
    yy, xx = torch.meshgrid(ax, ax, indexing="ij")
    labels = torch.zeros(n, size, size, dtype=torch.long)
    half = torch.rand(n, generator=g) < 0.3
    ang = torch.rand(n, generator=g) * 2 * math.pi
    off = (torch.rand(n, generator=g) - 0.5)
    plane = (xx * ang.cos()[:, None, None] + yy * ang.sin()[:, None, None]) > off[:, None, None]
    labels[plane & half[:, None, None]] = 1
    for k in range(3):
        present = (torch.rand(n, generator=g) < (0.9 if k == 0 else 0.5))[:, None, None]
        cx, cy = [(torch.rand(n, generator=g) * 1.2 - 0.6)[:, None, None] for _ in range(2)]
        rx, ry = [(torch.rand(n, generator=g) * 0.5 + 0.15)[:, None, None] for _ in range(2)]
        phi = (torch.rand(n, generator=g) * math.pi)[:, None, None]
        dx, dy = xx - cx, yy - cy
        u = dx * phi.cos() + dy * phi.sin()
        v = -dx * phi.sin() + dy * phi.cos()
        inside = (u / rx) ** 2 + (v / ry) ** 2 <= 1
        labels[inside & present] = 2 + k
    onehot = F.one_hot(labels, 5).movedim(-1, 1).float()
    return label_boundary(onehot, None).unsqueeze(1)


def warp(images: torch.Tensor, thetas: torch.Tensor) -> torch.Tensor:
    grid = F.affine_grid(thetas.to(images.dtype), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def synthetic_pairs(n: int, g: torch.Generator, r: TransformRange = TransformRange()) -> tuple[torch.Tensor, ...]:
    """``(moved, fixed, theta - I)`` for ``n`` random boundary maps; ``moved = warp(fixed, theta)``."""
    fixed = random_boundaries(n, g)
    thetas = random_thetas(n, g, r)
    moved = warp(fixed, thetas)
    return moved, fixed, thetas.flatten(1) - IDENTITY


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 6000
    batch: int = 64
    lr: float = 2e-3
    width: int = 16
    seed: int = 0
    eval_pairs: int = 2000


def evaluate(net: InverseTransformNet, n: int = 2000, seed: int = 12345) -> dict[str, float]:
    """Mean L2 error of the estimated ``theta - I`` on ``n`` held-out pairs, and the identity baseline's."""
    g = torch.Generator().manual_seed(seed)
    moved, fixed, truth = synthetic_pairs(n, g)
    with torch.no_grad():
        est = net(moved, fixed)
    return {"pairs": n, "seed": seed, "mean_error": float((est - truth).norm(dim=1).mean()),
            "identity_error": float(truth.norm(dim=1).mean()),
            "identity_estimate_on_equal_pairs": float(net(fixed, fixed).norm(dim=1).mean())}


def train(config: TrainConfig = TrainConfig(), out: str | os.PathLike | None = None,
          log: Any = print) -> tuple[InverseTransformNet, dict[str, Any]]:
    """Train the network deterministically (fixed seed, one thread) and write it atomically to ``out``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same bits on every machine and under any load
    try:
        torch.manual_seed(config.seed)
        g = torch.Generator().manual_seed(config.seed)
        net = InverseTransformNet(config.width)
        opt = torch.optim.Adam(net.parameters(), lr=config.lr)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=config.steps)
        started = time.time()
        for step in range(config.steps):
            moved, fixed, truth = synthetic_pairs(config.batch, g)
            if step % 4 == 0:
                # equal pairs: the estimate for "no transform" must be the identity, the loss's zero point
                moved[: config.batch // 8] = fixed[: config.batch // 8]
                truth[: config.batch // 8] = 0
            loss = F.smooth_l1_loss(net(moved, fixed), truth, beta=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if log and (step % 500 == 0 or step == config.steps - 1):
                log(f"step {step + 1}/{config.steps}  loss {float(loss.detach()):.4f}  {time.time() - started:.0f} s")
        net.eval()
        for p in net.parameters():
            p.requires_grad_(False)
        metrics = evaluate(net, config.eval_pairs)
        metrics["train_seconds"] = round(time.time() - started, 1)
    finally:
        torch.set_num_threads(threads)
    if out is not None:
        save(net, out, {"config": asdict(config), "metrics": metrics})
    return net, metrics


def save(net: InverseTransformNet, path: str | os.PathLike, meta: dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"width": net.width, "state_dict": {k: v.detach().clone() for k, v in net.state_dict().items()},
               "meta": meta, "transforms": asdict(TransformRange())}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    torch.save(payload, tmp)
    os.chmod(tmp, 0o644)  # package data: readable by every user of an installation
    os.replace(tmp, path)


def load(path: str | os.PathLike | None = None) -> InverseTransformNet:
    """The frozen network from ``path`` (default: the weights shipped in the package), in eval mode."""
    path = Path(path) if path is not None else WEIGHTS
    if not path.is_file():
        raise FileNotFoundError(f"InverseForm network weights not found at {path}; regenerate them with "
                                "`autoseg train-inverseform`")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    net = InverseTransformNet(int(payload["width"]))
    net.load_state_dict(payload["state_dict"])
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def load_meta(path: str | os.PathLike | None = None) -> dict[str, Any]:
    payload = torch.load(Path(path) if path is not None else WEIGHTS, map_location="cpu", weights_only=True)
    return payload["meta"]
