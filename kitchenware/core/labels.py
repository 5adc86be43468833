"""The six classes, defined once.

Training, evaluation and submission use this order; the exported model carries
the names in its `classes` output, so serving never needs this module.
"""

CLASSES: tuple[str, ...] = ("cup", "fork", "glass", "knife", "plate", "spoon")
NUM_CLASSES = len(CLASSES)


def unknown_labels(labels) -> list[str]:
    """Labels that are not one of CLASSES, sorted, each once."""
    return sorted({str(label) for label in labels} - set(CLASSES))
