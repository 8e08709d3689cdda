"""Imports every loss module so that their registration decorators run."""

from autoseg.losses import compound  # noqa: F401
from autoseg.losses.pixel import ce  # noqa: F401
from autoseg.losses.region import dice  # noqa: F401
