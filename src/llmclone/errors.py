"""The one error type for user mistakes: caught once at the CLI edge, printed as one sentence, exit 2."""


class UserError(Exception):
    """Something the user can fix: bad input, a missing file, impossible settings.

    The message is a complete sentence saying what is wrong and what to do.
    """
