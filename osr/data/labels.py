"""The one label space: known classes are 0..K-1 and UNKNOWN is K."""

UNKNOWN_NAME = "unknown"


def unknown_label(num_known: int) -> int:
    """The label that marks an image as UNKNOWN when ``num_known`` classes are known."""
    return num_known
