"""Boundary-level losses (to come: see the loss catalogue issues)."""
