"""SWAD's public name (Cha et al., NeurIPS 2021): `domainbed.swad.LossValley(n_converge,
n_tolerance, tolerance_ratio)` with `update_and_evaluate`, `dead_valley` and `get_final_model()`,
as in SWAD's own `domainbed/swad.py`. It lives in domainbed/averaging/loss_valley.py beside the
other averagers."""

from domainbed.averaging.loss_valley import LossValley

__all__ = ["LossValley"]
