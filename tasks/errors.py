"""The one exception type for mistakes a user can fix (bad flag, missing data, corrupt file).

CLIs catch it, print its message as one line and exit with status 2; everything else is a bug and
keeps its traceback.
"""


class UserError(Exception):
    """A problem in the user's input, with a message that says what is wrong and how to fix it."""
