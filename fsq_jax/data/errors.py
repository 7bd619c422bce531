"""The base class of input-data errors, so entry points report them in one line."""


class DataError(OSError):
    """Stored input that cannot be used as it is (corrupt image, unusable example store)."""
