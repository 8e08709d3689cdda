"""autoseg: which segmentation loss works on your data, trained and compared on nnU-Net v2."""

from __future__ import annotations

__version__ = "0.1.0"
