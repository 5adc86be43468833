"""Exceptions that carry a message meant for the user (the CLI prints it, no traceback)."""


class KitchenwareError(Exception):
    """A problem the user can fix: bad flags, bad input files, missing data."""


class ImageError(KitchenwareError):
    """The bytes are not an image we can decode (unreadable, truncated, empty)."""


class ImageTooLarge(ImageError):
    """The image declares more pixels than allowed (decompression-bomb guard)."""
