"""The machine a benchmark ran on, said the same way by every script.

docu/BENCHMARKS.md puts `nproc`, the CPU model and the date next to each figure.
MINI_DATA is where the benchmarks find real photos (KITCHENWARE_MINI_DATA overrides).
"""

from __future__ import annotations

import os
import platform
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
