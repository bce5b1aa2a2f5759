"""User-facing errors: the entry points print their message and exit non-zero, no traceback."""


class OSRError(Exception):
    """A problem the user can fix; the message says what, where and how."""


class DatasetNotFoundError(OSRError):
    pass


class DatasetCorruptError(OSRError):
    pass


class CheckpointError(OSRError):
    pass


class NotCalibratedError(OSRError):
    pass
