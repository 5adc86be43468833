"""Docker engines that cannot change this machine's network.

A default `dockerd` turns on net.ipv4.ip_forward, adds NAT and FORWARD rules
and lets containers send packets off the machine. `Sandbox` never starts one:

- the *build* daemon runs with `--bridge=none --iptables=false
  --ip-forward=false --ip-masq=false`, and builds use `--network host`, so
  pip reaches the package registry and nothing else is set up;
- the *run* daemon (same data root, so it sees the built images) starts inside
  a fresh named network namespace that holds only `lo`, through `nsenter
  --net` (`ip netns exec` remounts /sys, and dockerd then fails with "Devices
  cgroup isn't mounted"). What it does to iptables or ip_forward stays in that
  namespace, and containers cannot reach anything outside it. Clients run
  there too: `Sandbox.in_netns(argv)`.

On the way out, also after an exception, Ctrl-C or SIGTERM, the sandbox stops
the daemon it started (by pid), deletes the namespace and compares
`iptables-save` (filter and nat) and ip_forward with the snapshot it took on
the way in. Each daemon writes its pid under STATE_ROOT, so `python -m
devtools.docker_sandbox cleanup` can still stop one left behind by a
killed run.

    with Sandbox(data_root) as box:
        with box.daemon("build"):
            box.docker("build", "--network", "host", ...)
        with box.daemon("run"):
            box.in_netns(["docker-compose", "up", "-d"], env=box.env())
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from kitchenware.core.errors import KitchenwareError

# Debian's docker.io client speaks the API version of its own dockerd (20.10).
DOCKER_CLIENT = "/usr/bin/docker"
STATE_ROOT = Path("/run/kitchenware-sandbox")
NETNS_PREFIX = "kitchenware-"
DAEMON_START_S = 60.0
DAEMON_STOP_S = 30.0
REQUIRED_TOOLS = ("dockerd", "containerd", "nsenter", "ip", "iptables-save", "docker-compose")


class SandboxError(KitchenwareError):
    """Something the sandbox needs is missing, or the machine's network changed."""


def network_snapshot() -> dict[str, str]:
    """The host's filter and nat rules (without packet counters) and net.ipv4.ip_forward."""
    snapshot = {}
    for table in ("filter", "nat"):
        out = subprocess.run(
            ["iptables-save", "-t", table], capture_output=True, text=True, check=True
        ).stdout
        lines = [line for line in out.splitlines() if not line.startswith("#")]
        snapshot[table] = "\n".join(re.sub(r"\s*\[\d+:\d+\]$", "", line) for line in lines)
    snapshot["ip_forward"] = Path("/proc/sys/net/ipv4/ip_forward").read_text().strip()
    return snapshot


def missing_tools() -> list[str]:
    tools = [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
    return tools + ([] if os.access(DOCKER_CLIENT, os.X_OK) else [DOCKER_CLIENT])


def unavailable_reason() -> str | None:
    """Why no sandbox can start here (None when one can)."""
    if sys.platform != "linux":
        return "the Docker sandbox needs Linux network namespaces"
    if os.geteuid() != 0:
        return "dockerd and network namespaces need root"
    missing = missing_tools()
    if missing:
        return f"missing {', '.join(missing)} (apt-get install docker.io docker-compose mmdebstrap)"
    return None


class Sandbox:
    """Build and run daemons on one data root; see the module docstring."""

    def __init__(self, data_root: Path, name: str | None = None, log=print):
        self.data_root = Path(data_root)
        self.name = name or f"{NETNS_PREFIX}{os.getpid()}"
        self.state = STATE_ROOT / self.name
        self.netns_path = Path("/run/netns") / self.name
        self.log = log
        self.before: dict[str, str] | None = None
        self.netns_created = False
        self.current: subprocess.Popen | None = None
        self.socket: Path | None = None
        self.kind: str | None = None
        self._old_handlers: dict[int, object] = {}

    # -- lifecycle ---------------------------------------------------------------
    def __enter__(self) -> Sandbox:
        reason = unavailable_reason()
        if reason:
            raise SandboxError(reason)
        self.before = network_snapshot()
        # SIGTERM (CI cancelling, `timeout`) unwinds like Ctrl-C, so __exit__ runs.
        for signum in (signal.SIGTERM, signal.SIGHUP):
            self._old_handlers[signum] = signal.signal(signum, _raise_interrupt)
        self.state.mkdir(parents=True, exist_ok=True)
        self.data_root.mkdir(parents=True, exist_ok=True)
        return self

    def __exit__(self, *exc) -> None:
        problems = []
        try:
            self._stop_daemon()
        except Exception as error:  # keep cleaning up, report at the end
            problems.append(f"stopping dockerd: {error}")
        if self.netns_created:
            result = subprocess.run(["ip", "netns", "delete", self.name], capture_output=True)
            if result.returncode:
                problems.append(f"ip netns delete {self.name}: {result.stderr.decode().strip()}")
        remove_state(self.state)
        for signum, handler in self._old_handlers.items():
            signal.signal(signum, handler)
        changed = self.network_changes()
        if changed:
            problems.append(f"the machine's network configuration changed: {changed}")
        else:
            self.log(
                "sandbox: the machine's iptables filter/nat rules and ip_forward are unchanged"
            )
        if problems:
            raise SandboxError("; ".join(problems))

    def network_changes(self) -> list[str]:
        """Which of iptables filter, nat and ip_forward differ from the snapshot taken on entry."""
        after = network_snapshot()
        return [key for key in self.before if self.before[key] != after[key]]

    # -- daemons -----------------------------------------------------------------
    @contextlib.contextmanager
    def daemon(self, kind: str):
        """A dockerd for `build` (no networking) or `run` (inside the namespace), stopped after."""
        if kind not in ("build", "run"):
            raise ValueError(kind)
        exec_root = self.state / kind
        exec_root.mkdir(parents=True, exist_ok=True)
        self.socket = exec_root / "docker.sock"
        self.kind = kind
        argv = [
            "dockerd", "--host", f"unix://{self.socket}", "--data-root", str(self.data_root),
            "--exec-root", str(exec_root / "exec"), "--pidfile", str(exec_root / "dockerd.pid"),
            "--config-file", str(self._empty_config()),
        ]  # fmt: skip
        if kind == "build":
            argv += ["--bridge=none", "--iptables=false", "--ip-forward=false", "--ip-masq=false"]
        else:
            self._make_netns()
            argv = ["nsenter", f"--net={self.netns_path}", *argv]
        log_path = self.state / f"dockerd-{kind}.log"
        with open(log_path, "ab") as log:
            self.current = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.log(f"sandbox: dockerd ({kind}) pid {self.current.pid}, log {log_path}")
        try:
            self._wait_daemon(log_path)
            yield self
        finally:
            self._stop_daemon()

    def _empty_config(self) -> Path:
        """An empty daemon.json: the host's /etc/docker/daemon.json must not change the flags."""
        path = self.state / "daemon.json"
        path.write_text("{}\n")
        return path

    def _make_netns(self) -> None:
        if self.netns_created:
            return
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        self.netns_created = True
        subprocess.run(
            ["ip", "netns", "exec", self.name, "ip", "link", "set", "lo", "up"], check=True
        )
        links = subprocess.run(
            ["ip", "netns", "exec", self.name, "ip", "-o", "link"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        names = [line.split(":")[1].strip() for line in links.splitlines()]
        if names != ["lo"]:
            raise SandboxError(f"namespace {self.name} holds more than loopback: {names}")

    def _wait_daemon(self, log_path: Path) -> None:
        deadline = time.monotonic() + DAEMON_START_S
        while time.monotonic() < deadline:
            if self.current.poll() is not None:
                tail = log_path.read_text(errors="replace")[-3000:]
                raise SandboxError(f"dockerd exited with {self.current.returncode}:\n{tail}")
            if self.docker("version", check=False, capture_output=True).returncode == 0:
                return
            time.sleep(0.5)
        raise SandboxError(f"dockerd did not answer within {DAEMON_START_S:g} s; see {log_path}")

    def _stop_daemon(self) -> None:
        proc, self.current = self.current, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)  # dockerd stops its containers and containerd
        try:
            proc.wait(DAEMON_STOP_S)
        except subprocess.TimeoutExpired:
            self.log(f"sandbox: dockerd pid {proc.pid} ignored SIGTERM; killing it")
            proc.kill()
            proc.wait()

    # -- clients -----------------------------------------------------------------
    def env(self, **extra: str) -> dict[str, str]:
        """Environment for docker / docker-compose clients of the current daemon."""
        return {
            **os.environ,
            "DOCKER_HOST": f"unix://{self.socket}",
            "DOCKER_BUILDKIT": "0",
            "COMPOSE_DOCKER_CLI_BUILD": "0",
            **extra,
        }

    def in_netns(self, argv: list[str], **kwargs) -> subprocess.CompletedProcess:
        """Run a client inside the loopback-only namespace (where published ports answer)."""
        if not self.netns_created:
            raise SandboxError("no namespace yet: start the run daemon first")
        kwargs.setdefault("env", self.env())
        return subprocess.run(["nsenter", f"--net={self.netns_path}", *argv], **kwargs)

    def docker(self, *args: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
        """The docker client against the current daemon (in the namespace when it runs there)."""
        argv = [DOCKER_CLIENT, *args]
        kwargs.setdefault("env", self.env())
        if self.kind == "run":
            result = self.in_netns(argv, **kwargs)
        else:
            result = subprocess.run(argv, **kwargs)
        if check and result.returncode:
            detail = (result.stderr or "") if isinstance(result.stderr, str) else ""
            raise SandboxError(
                f"docker {' '.join(args)} failed with exit code {result.returncode}\n{detail}"
            )
        return result

    def output(self, *args: str) -> str:
        """Standard output of a docker command, stripped."""
        return self.docker(*args, capture_output=True, text=True).stdout.strip()

    def image_exists(self, tag: str) -> bool:
        return (
            self.docker("image", "inspect", tag, check=False, capture_output=True).returncode == 0
        )


def _raise_interrupt(signum, _frame):
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


def remove_state(folder: Path) -> None:
    """Delete a sandbox's state folder, unmounting what dockerd left mounted in it.

    A daemon without a bridge bind-mounts the host's network namespace at
    exec/netns/default and leaves it there when it stops.
    """
    prefix = f"{folder}/"
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    for mount in sorted((m for m in mounts if m.startswith(prefix)), reverse=True):
        subprocess.run(["umount", "--lazy", mount], check=False, capture_output=True)
    shutil.rmtree(folder, ignore_errors=True)


def _owner_alive(state: Path) -> bool:
    """Whether the process that made this sandbox (its name ends in the pid) still runs."""
    pid = state.name.removeprefix(NETNS_PREFIX)
    return pid.isdigit() and Path(f"/proc/{pid}").exists()


def cleanup(log=print, state_root: Path = STATE_ROOT) -> int:
    """Stop daemons and delete namespaces that killed sandboxes left behind; how many.

    Sandboxes whose owning process still runs are left alone.
    """
    count = 0
    orphans = [state for state in state_root.glob(f"{NETNS_PREFIX}*") if not _owner_alive(state)]
    for pidfile in sorted(p for state in orphans for p in state.glob("*/dockerd.pid")):
        with contextlib.suppress(ValueError, ProcessLookupError):
            pid = int(pidfile.read_text().strip())
            os.kill(pid, signal.SIGTERM)
            log(f"cleanup: stopped dockerd pid {pid} ({pidfile.parent})")
            count += 1
            for _ in range(int(DAEMON_STOP_S * 10)):
                if not Path(f"/proc/{pid}").exists():
                    break
                time.sleep(0.1)
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    for line in netns.splitlines():
        name = line.split()[0] if line.strip() else ""
        if name.startswith(NETNS_PREFIX) and not _owner_alive(Path(name)):
            subprocess.run(["ip", "netns", "delete", name], check=False)
            log(f"cleanup: deleted network namespace {name}")
            count += 1
    for state in orphans:
        remove_state(state)
    return count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.docker_sandbox")
    parser.add_argument("command", choices=["cleanup", "check"])
    args = parser.parse_args(argv)
    if args.command == "check":
        reason = unavailable_reason()
        print(reason or "the Docker sandbox can run here")
        return 1 if reason else 0
    cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
