"""Test-only safety net: a process that installs this may open sockets to loopback only.

The refused-URL tests send 10.0.0.1, 169.254.169.254 and the like to the fetcher and
to real gateways. The gateway vets addresses before it connects, but a test must not
rely on the code it checks: if that guard ever broke, the test would itself reach into
the network. This audit hook refuses (with PermissionError, before the system call) any
`socket.connect` whose address is not a loopback IP, so a broken guard makes such a
test fail without a packet leaving this machine. Unix-domain sockets are allowed.
"""

from __future__ import annotations

import ipaddress
import sys

_installed = [False]


def is_loopback(address) -> bool:
    """True for a Unix-socket path or an (ip, port, ...) tuple whose ip is loopback."""
    if not isinstance(address, tuple):
        return True  # AF_UNIX path (str or bytes)
    host = str(address[0]).split("%", 1)[0]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False  # a name: socket.connect would resolve it itself, out of our sight
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def _hook(event: str, args) -> None:
    if event == "socket.connect" and not is_loopback(args[1]):
        raise PermissionError(f"test network guard: connect to {args[1]!r} blocked (loopback only)")


def install() -> None:
    """Add the audit hook to this process (once; audit hooks cannot be removed)."""
    if not _installed[0]:
        sys.addaudithook(_hook)
        _installed[0] = True
