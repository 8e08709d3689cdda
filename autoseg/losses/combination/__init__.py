"""Combination losses with a formula of their own (exponential logarithmic, unified focal).

Weighted sums of registered losses live in ``autoseg/losses/compound.py``.
"""
