"""The one exception type for problems a user can fix (bad config, bad data, missing files)."""


class UserError(Exception):
    """A problem the user can fix. The CLI prints its message as one line and exits with code 2.

    Messages name the file, line or field at fault and say what to do about it.
    """
