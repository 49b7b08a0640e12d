"""The one exception type for bad input.

Anything a user can get wrong (an unknown name, a missing directory, a badly typed hparam)
raises `UsageError` with a one-line message naming the bad value and the valid ones; the
command-line entry points print that line and exit with status 2 instead of a traceback.
"""


class UsageError(ValueError):
    """Bad input from the user: the message is one line, fit to print as it is."""


def unknown_choice(what: str, value, valid) -> UsageError:
    """The standard 'unknown X' error, listing the valid choices."""
    return UsageError(f"unknown {what} {value!r}; valid: {', '.join(map(str, valid))}")


class UnknownNameError(UsageError, KeyError):
    """An unknown registry name: catchable as KeyError (DomainBed's contract) or UsageError."""

    def __str__(self):
        return self.args[0]


def unknown_name(what: str, value, valid) -> UnknownNameError:
    """The 'unknown X' error of a registry look-up, with a hint when only the case is wrong
    (`pacs` for PACS), the usual slip with names spelt as their papers spell them."""
    same_but_case = [name for name in map(str, valid) if name.lower() == str(value).lower()]
    hint = f" (did you mean {same_but_case[0]}?)" if same_but_case else ""
    return UnknownNameError(f"unknown {what} {value!r}{hint}; valid: {', '.join(map(str, valid))}")


def first_line(error: Exception, with_type: bool = False) -> str:
    """The first non-blank line of `error`'s message (with `Type: ` in front when `with_type`),
    or its type's name when the message is empty: what a one-line error quotes of a cause."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    return f"{type(error).__name__}: {lines[0]}" if with_type else lines[0]
