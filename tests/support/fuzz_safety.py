"""Keep fuzzed URLs on this machine, whatever the gateway's own guard does.

The gateway resolves a URL's host name before it vets the address, and a broken
guard would then connect. So every URL a fuzzer sends passes through `safe_url`
first: it is kept only when the gateway can refuse it without a name lookup and
would, at worst, connect to loopback (no host, a scheme other than http(s), an
unparsable URL, or a host that is 127.x.x.x, ::1 or localhost); any other host is
replaced by 127.0.0.1. Used by tests/integration/test_fuzz.py's strategies and as a
schemathesis hook (SCHEMATHESIS_HOOKS=support.fuzz_safety) for the spec-driven run.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit, urlunsplit

LOOPBACK_NAMES = {"localhost"}


def _loopback_host(host: str) -> bool:
    if host.lower().rstrip(".") in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def safe_url(value):
    """`value` itself when it cannot lead off this machine, else the same URL on 127.0.0.1."""
    if not isinstance(value, str):
        return value
    try:
        parts = urlsplit(value.strip())
        host = parts.hostname
        parts.port  # noqa: B018 (raises ValueError on a bad port: refused before any lookup)
    except ValueError:
        return value
    if parts.scheme.lower() not in ("http", "https") or not host or _loopback_host(host):
        return value
    return urlunsplit(("http", "127.0.0.1", parts.path, parts.query, ""))


def safe_body(body):
    """A /predict JSON body with its `url` / `urls` entries made safe (other keys untouched)."""
    if not isinstance(body, dict):
        return body
    body = dict(body)
    if "url" in body:
        body["url"] = safe_url(body["url"])
    if isinstance(body.get("urls"), list):
        body["urls"] = [safe_url(u) for u in body["urls"]]
    return body


try:  # as a schemathesis hooks module
    import schemathesis

    @schemathesis.hook
    def before_call(context, case, kwargs):
        """Runs for every request of every phase, right before it is sent."""
        case.body = safe_body(case.body)
        if "json" in kwargs:
            kwargs["json"] = safe_body(kwargs["json"])

except ImportError:  # pragma: no cover - schemathesis is a dev dependency
    pass
