"""The model server's stats file: served versions, load failures and batch counts as JSON.

Tests, benchmarks and operators read it to see what the running server does
(which versions it serves, how requests were batched) without a debug API.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from pathlib import Path


class StatsWriter:
    """Rewrites --stats-file (atomically) whenever batch counts or served versions change."""

    def __init__(self, path: str | None, collect: Callable[[], dict]):
        self.path = Path(path) if path else None
        self._collect = collect
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = None

    def write(self) -> None:
        if self.path is None:
            return
        with self._lock:
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text(json.dumps(self._collect(), indent=2, sort_keys=True))
            os.replace(tmp, self.path)

    def start(self, changed: threading.Event) -> None:
        if self.path is None:
            return

        def loop():
            while not self._stop.is_set():
                if changed.wait(0.2):
                    changed.clear()
                    self.write()

        self._thread = threading.Thread(target=loop, name="stats-writer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.write()


def read_stats(path: str | os.PathLike) -> dict:
    """The stats file as StatsWriter last wrote it; {} before its first write."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
