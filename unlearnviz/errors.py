"""One exception type for every problem a user can fix.

The CLI prints its message as one line and exits non-zero; the UI shows it as a readable
message. Anything else escaping is a bug, not a user error.
"""


class UserError(Exception):
    """A problem with the user's input or environment, with a message that says what to fix."""
