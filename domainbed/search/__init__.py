"""Budgeted hparam search with Optuna: `sweep launch --search asha` (docs/sweeps_and_results.md)."""
