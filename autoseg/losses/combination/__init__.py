"""Combination losses with their own formula (Exponential logarithmic, Unified focal); weighted sums live in compound.py."""
