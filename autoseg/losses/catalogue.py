"""Imports every loss module so that their registration decorators run."""

from autoseg.losses import compound  # noqa: F401
from autoseg.losses.combination import exp_log, unified_focal  # noqa: F401
from autoseg.losses.pixel import ce, focal, topk  # noqa: F401
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
from autoseg.losses.boundary import boundary_aware  # noqa: F401
from autoseg.losses.boundary import conditional_boundary, inverseform  # noqa: F401
