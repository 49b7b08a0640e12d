"""The one error for a number that stopped being finite, and the check that raises it.

A NaN or infinite loss, accuracy or threshold means the weights (or the arithmetic on them) broke;
any selection or average built on it would print a plausible-looking but meaningless percentage.
Every place that hands such a number on (the training step, the checkpoint's evaluation, the
averaging threshold, the averaged model's evaluation, the selection rows) calls `require_finite`,
which stops the run with one line naming where, which quantity and its value.
"""

import math

from domainbed.errors import UsageError


class NonFiniteNumberError(UsageError):
    """A loss, accuracy or threshold is NaN or infinite."""


def nonfinite(numbers: dict) -> dict:
    """The entries of `numbers` that are NaN or infinite (anything that is not a real number, such
    as a list of test environments, is no number to check)."""
    return {key: value for key, value in numbers.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isfinite(value)}


def require_finite(numbers: dict, where: str, consequence: str) -> None:
    """Raise `NonFiniteNumberError` "`where`: key = value, ...; `consequence`" when any of
    `numbers` is not finite."""
    bad = nonfinite(numbers)
    if bad:
        values = ", ".join(f"{key} = {value}" for key, value in bad.items())
        raise NonFiniteNumberError(f"{where}: {values}; {consequence}")
