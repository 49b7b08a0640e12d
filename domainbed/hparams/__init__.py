"""Hyperparameters: declarations, configuration layers, range checks and help."""
