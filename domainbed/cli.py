"""What every command-line tool of the harness does around its work: a parser whose help ends
with an example, one line on stderr per error, and the exit codes (0, 1 as the tool says, 2 for a
usage error, 130 for Ctrl-C)."""

import argparse
import sys

from domainbed.errors import UsageError


def parser(description: str, example: str, **kwargs) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(description=description, epilog=f"example:\n  {example}",
                                   formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)


def run_main(work, interrupted) -> int:
    """`work()`'s exit code (None: 0). `interrupted` is the line printed on Ctrl-C, or a function
    of the KeyboardInterrupt that returns it."""
    try:
        code = work()
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:
        print(interrupted(interrupt) if callable(interrupted) else interrupted, file=sys.stderr)
        return 130
    return 0 if code is None else code
