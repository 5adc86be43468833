"""A per-process memory budget for image decoding, shared by a worker's threads.

A few bytes of GIF or PNG can declare a 40-megapixel canvas, and each gunicorn
worker decodes for several threads at once. Every decode reserves what it will
need (estimated from the header) before it starts, so the decodes running in
one worker never hold more than the budget together, whatever arrives; a
request that would need more than the whole budget is refused outright.
"""

from __future__ import annotations

import ctypes
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

# glibc's mallopt parameter number (malloc.h).
_M_MMAP_THRESHOLD = -3


def return_freed_memory_to_the_os(threshold: int = 128 * 1024) -> bool:
    """Pin glibc's mmap threshold, so the big buffers of a decode go back to the OS when freed.

    glibc raises its threshold after each large free (up to 32 MiB); Pillow's
    16 MiB image blocks then come from the heap, and a worker that once decoded
    a 40-megapixel image keeps ~200 MB it no longer uses (measured under the
    manifest's 512 MiB limit: two such workers left no room). Fixing the
    threshold keeps the decode budget true after the decode too. Returns False
    where the C library has no mallopt.
    """
    try:
        return bool(ctypes.CDLL(None).mallopt(_M_MMAP_THRESHOLD, int(threshold)))
    except (OSError, AttributeError):
        return False


class BudgetExhausted(Exception):
    """The budget stayed too full for the whole wait."""


class MemoryBudget:
    def __init__(self, total_bytes: int) -> None:
        self.total = int(total_bytes)
        self.in_use = 0
        self._changed = threading.Condition()

    @contextmanager
    def reserve(self, nbytes: int, timeout: float) -> Iterator[None]:
        """Hold `nbytes` of the budget for the block, waiting up to `timeout` s for room."""
        if nbytes > self.total:
            raise ValueError(f"{nbytes} bytes is more than the whole budget of {self.total}")
        deadline = time.monotonic() + timeout
        with self._changed:
            while self.in_use + nbytes > self.total:
                left = deadline - time.monotonic()
                if left <= 0 or not self._changed.wait(left):
                    if self.in_use + nbytes > self.total:
                        raise BudgetExhausted(
                            f"{self.in_use:,} of {self.total:,} decode bytes in use"
                        )
            self.in_use += nbytes
        try:
            yield
        finally:
            with self._changed:
                self.in_use -= nbytes
                self._changed.notify_all()
