"""Put tests/support/netguard on a child's PYTHONPATH and the child can connect to loopback only."""

import loopback_only

loopback_only.install()
