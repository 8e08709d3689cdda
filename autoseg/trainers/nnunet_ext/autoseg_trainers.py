"""nnU-Net's ``nnUNet_extTrainer`` folder: exposes every autoseg trainer by name (all generated)."""

from autoseg.trainers.factory import registered_trainers, resolve_trainer_name

globals().update(registered_trainers())


def __getattr__(name):
    # nnU-Net asks hasattr(module, name): hyper-parameter variants are made on demand.
    cls = resolve_trainer_name(name)
    if cls is None:
        raise AttributeError(name)
    return cls
