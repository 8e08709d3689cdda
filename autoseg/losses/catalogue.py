"""Imports every loss module so that their registration decorators run."""

from autoseg.losses import compound  # noqa: F401
from autoseg.losses.boundary import boundary, hausdorff_dt, region_wise, skeleton_recall  # noqa: F401
from autoseg.losses.combination import exp_log, unified_focal  # noqa: F401
from autoseg.losses.pixel import ce, dmce, focal, topk  # noqa: F401
from autoseg.losses.region import (  # noqa: F401
    dice,
    focal_tversky,
    gwdl,
    iou,
    log_cosh_dice,
    lovasz,
    rmi,
    robust_t,
    sens_spec,
    tversky,
)
