"""The one error of a data file that cannot be used."""

__all__ = ["DataFileError"]


class DataFileError(ValueError):
    """A data file that cannot be used; the message is one line naming the file and the fix."""
