"""The one exception type the CLI turns into a single clear line and a non-zero exit."""


class UserError(Exception):
    """Bad input from the user: the message names the bad value and what would work instead.

    The CLI prints ``error: <message>`` on one line and exits with status 2. Raise it (or a
    subclass) for anything the user can fix; let real bugs raise their own exceptions.
    """
