"""Where the tests find the repository and the real photos, their tiny sizes, and the guard.

Gateways the tests start get tests/support/netguard on their PYTHONPATH: its
sitecustomize lets the workers connect to loopback addresses only, so a refused-URL
test cannot reach the network even if the gateway's own guard broke.
"""

from __future__ import annotations

from pathlib import Path

from devtools.benchlib import MINI_DATA as MINI_DATA
from devtools.stack import Gateway
from kitchenware.training.presets import PRESETS

REPO = Path(__file__).resolve().parents[2]
NETGUARD = REPO / "tests" / "support" / "netguard"
# Tiny sizes keep TensorFlow tests fast on 2 CPU cores (Xception's minimum is 71).
TINY_SIZE = PRESETS["tiny"]["size"]
# Small enough for 2 CPU cores, big enough that ImageNet features separate the classes.
PRETRAINED_SIZE = 112
PRETRAINED_FINE_TUNE_LAYERS = 12


def guarded_gateway(log_dir: Path, env: dict[str, str], **options) -> Gateway:
    """A gunicorn gateway (devtools.stack) whose workers may reach loopback only."""
    return Gateway(log_dir, env, pythonpath=[NETGUARD], **options)
