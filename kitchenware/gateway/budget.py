"""A per-process memory budget for request bodies and image decoding, shared by a worker's threads.

A few bytes of GIF or PNG can declare a 40-megapixel canvas, a 50 MiB JSON body
holds ~37 MiB of images once decoded, and each gunicorn worker serves several
threads at once. Every request reserves what reading its body may hold (from its
size) before it reads it, and every decode what it will need (estimated from the
header) before it starts, so one worker's requests never hold more than the
budget together, whatever arrives; one that would need more than the whole
budget is refused outright.
"""

from __future__ import annotations

import ctypes
import threading
import time

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

    def reserve(self, nbytes: int, timeout: float) -> Reservation:
        """Hold `nbytes` of the budget, waiting up to `timeout` s for room (BudgetExhausted);
        use the Reservation as a context manager: its end returns what it still holds."""
        self._acquire(nbytes, timeout)
        return Reservation(self, nbytes)

    def _acquire(self, nbytes: int, timeout: float) -> None:
        if nbytes > self.total:
            raise ValueError(f"{nbytes} bytes is more than the whole budget of {self.total}")
        deadline = time.monotonic() + timeout
        with self._changed:
            while self.in_use + nbytes > self.total:
                left = deadline - time.monotonic()
                if left <= 0 or not self._changed.wait(left):
                    if self.in_use + nbytes > self.total:
                        raise BudgetExhausted(f"{self.in_use:,} of {self.total:,} bytes in use")
            self.in_use += nbytes

    def _release(self, nbytes: int) -> None:
        with self._changed:
            self.in_use -= nbytes
            self._changed.notify_all()


class Reservation:
    """What one `reserve` holds: a request's (or a decode's) share of its worker's budget."""

    def __init__(self, budget: MemoryBudget, nbytes: int) -> None:
        self._budget = budget
        self._lock = threading.Lock()
        self.nbytes = nbytes

    def __enter__(self) -> Reservation:
        return self

    def __exit__(self, *exc) -> None:
        self.give_back(self.nbytes)

    def grow(self, nbytes: int, timeout: float) -> None:
        """Hold `nbytes` more, waiting up to `timeout` s for room (BudgetExhausted)."""
        self._budget._acquire(nbytes, timeout)
        with self._lock:
            self.nbytes += nbytes

    def give_back(self, nbytes: int) -> None:
        """Return up to `nbytes` of what this reservation holds to the budget."""
        with self._lock:
            nbytes = min(max(0, int(nbytes)), self.nbytes)
            self.nbytes -= nbytes
        self._budget._release(nbytes)
