"""The Docker sandbox's bookkeeping, without a daemon (tests/docker runs the daemons)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from devtools import docker_sandbox

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounts and iptables-save need root")


def mounted(path: Path) -> bool:
    return any(
        line.split()[1] == str(path) for line in Path("/proc/mounts").read_text().splitlines()
    )


@needs_root
def test_network_snapshot_ignores_packet_counters_only():
    first, second = docker_sandbox.network_snapshot(), docker_sandbox.network_snapshot()
    assert first == second
    assert set(first) == {"filter", "nat", "ip_forward"}
    assert first["ip_forward"] in ("0", "1")
    assert "[" not in first["filter"]  # ":INPUT ACCEPT [12:345]" loses its counters


@needs_root
def test_remove_state_unmounts_what_a_daemon_left_mounted(tmp_path):
    state = tmp_path / "kitchenware-1"
    target = state / "build" / "exec" / "netns" / "default"
    target.parent.mkdir(parents=True)
    target.touch()
    subprocess.run(["mount", "--bind", "/proc/self/ns/net", str(target)], check=True)
    assert mounted(target)
    docker_sandbox.remove_state(state)
    assert not mounted(target) and not state.exists()


def test_cleanup_leaves_sandboxes_of_running_processes_alone(tmp_path):
    alive = tmp_path / f"{docker_sandbox.NETNS_PREFIX}{os.getpid()}"
    dead_pid = 2**22 + 1  # above the kernel's pid_max ceiling: never a running process
    dead = tmp_path / f"{docker_sandbox.NETNS_PREFIX}{dead_pid}"
    for state in (alive, dead):
        (state / "run").mkdir(parents=True)
    docker_sandbox.cleanup(log=lambda _: None, state_root=tmp_path)
    assert alive.is_dir() and not dead.exists()
