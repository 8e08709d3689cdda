"""Pixel-level losses: each voxel scored on its own."""
