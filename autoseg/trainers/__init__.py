"""nnU-Net trainers generated from the loss registry: one ``nnUNetTrainer_autoseg_<loss>`` per loss."""

from __future__ import annotations

__all__ = ["make_trainer_class", "registered_trainers", "resolve_trainer_name", "trainer_class_name"]


def __getattr__(name: str):
    # Importing nnU-Net takes seconds; load the factory only when a trainer is asked for.
    if name in __all__:
        from autoseg.trainers import factory

        return getattr(factory, name)
    raise AttributeError(name)
