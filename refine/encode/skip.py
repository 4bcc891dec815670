"""The signal an encoder raises when a column cannot be a feature."""


class SkipColumn(Exception):
    """A column cannot be used as a feature; the message says why."""
