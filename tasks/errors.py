"""The one exception type for mistakes a user can fix (bad flag, missing data, corrupt file).

CLIs catch it, print its message as one line and exit with status 2; everything else is a bug and
keeps its traceback.
"""
import sys


class UserError(Exception):
    """A problem in the user's input, with a message that says what is wrong and how to fix it."""


def run_cli(main, argv=None):
    """Run a CLI ``main``; a ``UserError`` becomes one line on stderr and exit status 2."""
    try:
        main(argv)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
