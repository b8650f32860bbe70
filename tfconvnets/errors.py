"""Errors that are the user's to fix: reported as one line, without a traceback."""


class UserError(Exception):
    """A bad flag, missing file or bad input. The message names the flag or file."""
