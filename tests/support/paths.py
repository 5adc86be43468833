"""Where the tests find the repository, the real photos and their tiny sizes."""

from __future__ import annotations

import os
import socket
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
NETGUARD = REPO / "tests" / "support" / "netguard"
MINI_DATA = Path(
    os.environ.get("KITCHENWARE_MINI_DATA", REPO.parent / "shared" / "data" / "kitchenware-mini")
)
# Tiny sizes keep TensorFlow tests fast on 2 CPU cores (Xception's minimum is 71).
TINY_SIZE = 71
# Small enough for 2 CPU cores, big enough that ImageNet features separate the classes.
PRETRAINED_SIZE = 112
PRETRAINED_FINE_TUNE_LAYERS = 12

_PORTS_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A free loopback port, never the same one twice in this test session.

    The kernel may hand back a port it just gave us if the first caller has not
    bound it yet; remembering what we handed out rules that race out.
    """
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _PORTS_HANDED_OUT:
            _PORTS_HANDED_OUT.add(port)
            return port
