"""The one exception type for mistakes a user can fix (bad flag, missing data, corrupt file).

CLIs catch it, print its message as one line and exit with status 2; everything else is a bug and
keeps its traceback. Ctrl-C and SIGTERM (``tasks.common.interrupts``) end a CLI the same way.
"""
import sys

from tasks.common.interrupts import Handlers, interrupt


class UserError(Exception):
    """A problem in the user's input, with a message that says what is wrong and how to fix it."""


def run_cli(main, argv=None):
    """Run a CLI ``main``; a ``UserError``, Ctrl-C or SIGTERM becomes one line on stderr and exit status 2."""
    try:
        with Handlers(interrupt):
            main(argv)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as exc:
        name = exc.args[0] if exc.args else "SIGINT"
        print(f"error: stopped by {name}; every file written so far is whole (none is left half-written)",
              file=sys.stderr)
        sys.exit(2)
