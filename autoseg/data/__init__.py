"""Datasets: the bundled sample, resolution of ``--dataset`` arguments, and converters."""

from autoseg.data.bundled import BUNDLED, import_bundled, resolve_dataset

__all__ = ["BUNDLED", "import_bundled", "resolve_dataset"]
