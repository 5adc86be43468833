"""A real memory limit for processes a test starts: a cgroup (v1 or v2), root only.

The gateway's memory limit in the manifests is what a hostile upload must not
break; this puts already-running processes under the same limit and reports
the peak and the OOM kills afterwards.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")


class MemoryCgroup:
    def __init__(self, name: str, limit_bytes: int) -> None:
        self.v2 = (ROOT / "cgroup.controllers").is_file()
        self.parent = ROOT if self.v2 else ROOT / "memory"
        self.path = self.parent / f"{name}-{os.getpid()}"
        self.limit = int(limit_bytes)

    @staticmethod
    def unavailable() -> str | None:
        """Why a memory cgroup cannot be made here, or None."""
        if os.geteuid() != 0:
            return "memory cgroups need root"
        v2 = (ROOT / "cgroup.controllers").is_file()
        if v2 and "memory" not in (ROOT / "cgroup.subtree_control").read_text().split():
            return "cgroup v2 without the memory controller enabled for children"
        if not v2 and not (ROOT / "memory" / "memory.limit_in_bytes").is_file():
            return "no cgroup v1 memory controller mounted"
        return None

    def __enter__(self) -> MemoryCgroup:
        self.path.mkdir()
        if self.v2:
            (self.path / "memory.max").write_text(str(self.limit))
            (self.path / "memory.swap.max").write_text("0")
        else:
            (self.path / "memory.limit_in_bytes").write_text(str(self.limit))
            swap = self.path / "memory.memsw.limit_in_bytes"
            if swap.exists():
                swap.write_text(str(self.limit))
        return self

    def add(self, pid: int) -> None:
        (self.path / "cgroup.procs").write_text(str(pid))

    def current_bytes(self) -> int:
        name = "memory.current" if self.v2 else "memory.usage_in_bytes"
        return int((self.path / name).read_text())

    def peak_bytes(self) -> int:
        name = "memory.peak" if self.v2 else "memory.max_usage_in_bytes"
        return int((self.path / name).read_text())

    def oom_kills(self) -> int:
        events = self.path / ("memory.events" if self.v2 else "memory.oom_control")
        for line in events.read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0

    def __exit__(self, *exc) -> None:
        for pid in (self.path / "cgroup.procs").read_text().split():
            try:
                (self.parent / "cgroup.procs").write_text(pid)
            except OSError:
                pass  # already gone
        self.path.rmdir()
