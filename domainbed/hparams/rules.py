"""Valid ranges of hparams and flags, as small named rules that an error message can quote.

A `Rule` pairs the range as a person reads it ("an integer >= 1") with the test of a value.
Hparam declarations (domainbed/hparams/declare.py) and the command line's flags use them; the
checks (domainbed/hparams/checks.py) apply them before a run creates anything.
"""

import math
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Rule:
    valid: str  # the valid range, as the error message states it
    accepts: Callable[[object], bool]


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def int_at_least(low: int) -> Rule:
    valid = "a positive integer" if low == 1 else f"an integer >= {low}"
    return Rule(valid, lambda v: _is_int(v) and v >= low)


def int_between(low: int, high: int) -> Rule:
    return Rule(f"an integer from {low} to {high}", lambda v: _is_int(v) and low <= v <= high)


def real() -> Rule:
    return Rule("a finite number", _is_real)


def positive_float() -> Rule:
    return Rule("a finite number > 0", lambda v: _is_real(v) and v > 0)


def nonnegative_float() -> Rule:
    return Rule("a finite number >= 0", lambda v: _is_real(v) and v >= 0)


def at_least(low: float) -> Rule:
    return Rule(f"a finite number >= {low}", lambda v: _is_real(v) and v >= low)


def fraction(low_open: bool = False, high_open: bool = True) -> Rule:
    """A number in [0, 1), or with the given ends open / closed."""
    low, high = "(" if low_open else "[", ")" if high_open else "]"

    def accepts(v):
        return (_is_real(v) and (v > 0 if low_open else v >= 0) and (v < 1 if high_open else v <= 1))

    return Rule(f"a number in {low}0, 1{high}", accepts)


def choice(names) -> Rule:
    names = tuple(names)
    return Rule("one of " + ", ".join(map(str, names)), lambda v: v in names)


def optional(rule: Rule) -> Rule:
    """`rule`, or None (the flag left out: the dataset's default)."""
    return Rule(f"{rule.valid} (or left out)", lambda v: v is None or rule.accepts(v))


def satisfies(valid: str, check: Callable[[object], object]) -> Rule:
    """A rule from a parser that raises on a bad value (a registry look-up, say)."""

    def accepts(value) -> bool:
        try:
            check(value)
        except (KeyError, ValueError, TypeError):
            return False
        return True

    return Rule(valid, accepts)
