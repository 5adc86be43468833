"""The machine a benchmark ran on, said the same way by every script.

docu/BENCHMARKS.md puts `nproc`, the CPU model and the date next to each figure.
MINI_DATA is where the benchmarks find real photos (KITCHENWARE_MINI_DATA overrides).
"""

from __future__ import annotations

import os
import platform
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from devtools.stack import REPO

MINI_DATA = Path(
    os.environ.get("KITCHENWARE_MINI_DATA", REPO.parent / "shared" / "data" / "kitchenware-mini")
)


def cpu_model() -> str:
    """The `model name` of /proc/cpuinfo; platform's guess (or "unknown") where there is none."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict:
    """nproc, CPU model, Python version and the UTC date and minute, for a JSON report."""
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu_model(),
        "python": platform.python_version(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def run_in_threads(work, arguments: list) -> tuple[float, list[Exception]]:
    """`work(argument)` in one thread per argument, all released at once: (seconds from
    the release until the last thread ends, the exceptions raised; never hidden)."""
    barrier = threading.Barrier(len(arguments) + 1)
    errors: list[Exception] = []

    def released(argument) -> None:
        barrier.wait()
        try:
            work(argument)
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=released, args=(a,)) for a in arguments]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started, errors
