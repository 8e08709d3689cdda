"""Region-level losses: overlap of predicted and reference regions per class."""
