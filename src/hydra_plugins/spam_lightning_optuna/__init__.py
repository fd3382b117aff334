"""Hydra plugin: the Optuna sweeper of spam_lightning (implementation in `spam_lightning.training.sweeps`)."""
