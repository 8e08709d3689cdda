"""The batchgeneratorsv2 transform that computes the loss's ground-truth maps in nnU-Net's augmentation workers.

It runs last in the training and validation pipelines, after spatial augmentation and after the
deep-supervision down-sampling, so every map belongs to the very (rotated, scaled, mirrored)
label map it is compared with, at every scale. nnU-Net's data loader keeps only ``image`` and
``segmentation`` of a transformed sample, so the maps travel inside ``segmentation``: at a scale
that needs maps the label channel is followed by ``C`` channels per kind, all float32 (labels are
small integers, exact in float32). :func:`split_target` undoes the packing on the trainer side.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from batchgeneratorsv2.transforms.base.basic_transform import BasicTransform

from autoseg.losses.maps import case_maps, check_classes, check_kinds


class LossMapsTransform(BasicTransform):
    """Append the map kinds ``layout[i]`` of each scale ``i`` to that scale's segmentation.

    Args:
        layout: per deep-supervision scale (one entry without deep supervision), the kinds to compute
            there; an empty tuple leaves that scale's label map as it is.
        num_classes: C, channels per kind.
        spacings: per scale, the voxel spacing of that scale's label map.
        ignore_index: the dataset's ignore label, or None.
        classes: the classes whose maps are computed (:func:`autoseg.losses.maps.map_classes` of the
            loss); the other channels are 0. None: all.
    """

    def __init__(self, layout: Sequence[Sequence[str]], num_classes: int, spacings: Sequence[Sequence[float]],
                 ignore_index: int | None = None, classes: Sequence[int] | None = None):
        super().__init__()
        if len(layout) != len(spacings):
            raise ValueError(f"got {len(layout)} scale layouts but {len(spacings)} spacings")
        self.layout = [check_kinds(k) for k in layout]
        self.num_classes = int(num_classes)
        self.spacings = [tuple(float(s) for s in sp) for sp in spacings]
        self.ignore_index = ignore_index
        self.classes = check_classes(classes, self.num_classes)

    def apply(self, data_dict: dict, **params) -> dict:
        seg = data_dict.get("segmentation")
        if seg is None:
            return data_dict
        segs = seg if isinstance(seg, list) else [seg]
        if len(segs) != len(self.layout):
            raise ValueError(f"the segmentation has {len(segs)} scales but the maps layout {len(self.layout)}")
        out = []
        for s, kinds, spacing in zip(segs, self.layout, self.spacings):
            if not kinds:
                out.append(s)
                continue
            if s.shape[0] != 1:
                raise ValueError(f"expected a one-channel label map, got shape {tuple(s.shape)}")
            maps = case_maps(s[0].numpy(), self.num_classes, kinds, spacing, self.ignore_index, self.classes)
            out.append(torch.cat([s.float()] + [torch.from_numpy(maps[k]) for k in kinds], 0))
        data_dict["segmentation"] = out if isinstance(seg, list) else out[0]
        return data_dict


def split_target(target, layout: Sequence[Sequence[str]] | None, num_classes: int):
    """Undo :class:`LossMapsTransform`'s packing of a collated batch.

    Returns ``(labels, extras)``: ``labels`` as nnU-Net expects them (a list per scale, or one
    tensor), int16 ``[B, 1, *spatial]``; ``extras`` a list (per scale) of ``{kind: [B, C, *spatial]}``.
    """
    targets = target if isinstance(target, list) else [target]
    if not layout:
        return target, [{} for _ in targets]
    labels, extras = [], []
    for t, kinds in zip(targets, layout):
        if not kinds:
            labels.append(t)
            extras.append({})
            continue
        expected = 1 + len(kinds) * num_classes
        if t.shape[1] != expected:
            raise ValueError(f"a packed target has {t.shape[1]} channels, expected {expected} for kinds {kinds}")
        labels.append(t[:, :1].to(torch.int16))
        extras.append({k: t[:, 1 + i * num_classes: 1 + (i + 1) * num_classes] for i, k in enumerate(kinds)})
    return (labels if isinstance(target, list) else labels[0]), extras


def scale_spacings(spacing: Sequence[float], patch_size: Sequence[int],
                   ds_scales: Sequence[Sequence[float]] | None) -> list[tuple[float, ...]]:
    """The voxel spacing of each deep-supervision scale: nnU-Net resizes a patch to round(size * scale)."""
    spacing = np.asarray(spacing, dtype=float)[-len(patch_size):]
    if ds_scales is None:
        return [tuple(spacing)]
    result = []
    for scale in ds_scales:
        scale = list(scale) if isinstance(scale, (list, tuple, np.ndarray)) else [scale] * len(patch_size)
        new = [round(p * s) for p, s in zip(patch_size, scale)]
        result.append(tuple(float(sp * p / n) for sp, p, n in zip(spacing, patch_size, new)))
    return result
