"""Download an image from a user-supplied URL without becoming a door into the private network.

A naive `requests.get(url)` in a public gateway is a server-side request
forgery hole: anyone can make it read the cloud metadata service or internal
admin pages. So, for the first request and for every redirect hop:

1. only http and https are accepted;
2. the host name is resolved here, and every address it resolves to is vetted
   (private, loopback, link-local, multicast, reserved, unspecified, shared and
   cloud-metadata addresses are refused, also when hidden inside an IPv6 form
   that embeds or translates an IPv4 address: mapped, compatible, translated,
   NAT64, 6to4, Teredo, ISATAP) - before any connection is made;
3. the connection goes to the vetted address itself, with the original host
   name sent as Host header, TLS SNI and certificate name, so a second DNS
   answer (DNS rebinding) cannot swap the address afterwards.

A redirect's Location is held to the same rules; one that is unparsable or points
somewhere refused is the server's fault, not the user's: FetchFailed (502) naming
the problem, where the user's own URL would be UrlRefused (422).

Downloads are streamed with a byte cap, connect and read timeouts, and one
overall deadline, so a slow or endless URL cannot hold a worker.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import quote, urljoin, urlsplit

import urllib3
import urllib3.connection

from kitchenware.gateway.errors import FetchFailed, TooLarge, UrlRefused

MAX_REDIRECTS = 3
CHUNK_BYTES = 64 * 1024
USER_AGENT = "kitchenware-gateway"
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Cloud credential and metadata endpoints, refused in every mode (also with
# ALLOW_PRIVATE_URLS): some look public or sit outside link-local space.
METADATA_ADDRESSES: frozenset[IPAddress] = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, Oracle, OpenStack, DigitalOcean IMDS
        "fd00:ec2::254",  # AWS IMDS over IPv6
        "169.254.170.2",  # AWS ECS task credentials
        "169.254.170.23",  # AWS EKS Pod Identity agent
        "fd00:ec2::23",  # AWS EKS Pod Identity agent over IPv6
        "100.100.100.200",  # Alibaba Cloud metadata
        "192.0.0.192",  # Oracle Cloud metadata (legacy address)
        "168.63.129.16",  # Azure WireServer (host agent)
    )
)
# All of link-local holds platform services (metadata, DNS, time): never a photo store.
ALWAYS_REFUSED_NETWORKS = (
    ipaddress.ip_network("169.254.0.0/16"),
    ipaddress.ip_network("fe80::/10"),
)
METADATA_HOSTS = frozenset({"metadata.google.internal", "metadata.goog", "instance-data"})
# IPv6 forms that embed or translate an IPv4 address (see _embedded_ipv4s).
IPV4_MAPPED = ipaddress.ip_network("::ffff:0:0/96")  # ::ffff:a.b.c.d
IPV4_TRANSLATED = ipaddress.ip_network("::ffff:0:0:0/96")  # ::ffff:0:a.b.c.d (RFC 2765, SIIT)
IPV4_COMPATIBLE = ipaddress.ip_network("::/96")  # ::a.b.c.d, deprecated (:: and ::1 excluded)
NAT64_WELL_KNOWN = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052
# RFC 8215: a network picks its own prefix inside it, and its length is not known here.
NAT64_LOCAL_USE = ipaddress.ip_network("64:ff9b:1::/48")
NAT64_LOCAL_USE_LENGTHS = (48, 56, 64, 96)  # the RFC 6052 layouts that fit inside the /48
# Forms that name the IPv4 host itself (the host's own stack, or a NAT64 gateway, relays
# to it): with private URLs refused they are judged by that IPv4 address alone. DNS64
# answers 64:ff9b::a.b.c.d for every IPv4-only site in an IPv6-only cluster.
IPV4_HOST_FORMS = (IPV4_MAPPED, NAT64_WELL_KNOWN)

_PRIVATE_CHECKS = (
    ("is_unspecified", "an unspecified address"),
    ("is_loopback", "a loopback address"),
    ("is_link_local", "a link-local address"),
    ("is_multicast", "a multicast address"),
    ("is_private", "a private address"),
    ("is_reserved", "a reserved address"),
)


def normalised(ip: IPAddress) -> IPAddress:
    """`ip` without an IPv6 zone id (fd00:ec2::254%eth0 is fd00:ec2::254 on one link)."""
    if ip.version == 6 and ip.scope_id is not None:
        return ipaddress.IPv6Address(int(ip))
    return ip


def rfc6052_ipv4(value: int, length: int) -> ipaddress.IPv4Address:
    """The IPv4 address inside the IPv6 address `value` under an RFC 6052 prefix of
    `length` bits (32, 40, 48, 56, 64 or 96): the IPv4 bits follow the prefix and skip
    bits 64-71, the "u" octet."""
    if length == 96:
        return ipaddress.IPv4Address(value & 0xFFFFFFFF)
    before = max(0, 64 - length)  # IPv4 bits between the prefix and the u octet
    after = 32 - before  # IPv4 bits from bit 72 on
    high = (value >> 64) & ((1 << before) - 1)
    low = (value >> (56 - after)) & ((1 << after) - 1)
    return ipaddress.IPv4Address((high << after) | low)


def _embedded_ipv4s(ip: IPAddress) -> list[ipaddress.IPv4Address]:
    """Every IPv4 address an IPv6 address may carry or translate to: mapped, translated,
    compatible, NAT64 (well-known; local-use in each layout it may have), 6to4, Teredo
    (server and client) and ISATAP. Empty for other addresses."""
    if ip.version != 6:
        return []
    value = int(ip)
    low32 = ipaddress.IPv4Address(value & 0xFFFFFFFF)
    found: list[ipaddress.IPv4Address] = []
    if ip in IPV4_MAPPED or ip in IPV4_TRANSLATED or ip in NAT64_WELL_KNOWN:
        found.append(low32)
    if ip in IPV4_COMPATIBLE and value > 1:
        found.append(low32)
    if ip in NAT64_LOCAL_USE:
        found.extend(rfc6052_ipv4(value, length) for length in NAT64_LOCAL_USE_LENGTHS)
    if ip.sixtofour is not None:
        found.append(ip.sixtofour)
    if ip.teredo is not None:
        found.extend(ip.teredo)  # (server, client): refusing on either is the safe side
    if (value >> 32) & 0xFDFFFFFF == 0x00005EFE:  # ISATAP interface id (0000|0200):5efe
        found.append(low32)
    return list(dict.fromkeys(found))


def refusal_reason(ip: IPAddress, allow_private: bool = False) -> str | None:
    """Why the gateway must not connect to `ip`, or None when it may.

    Metadata and link-local addresses are refused in every mode, also inside any IPv6
    form of them; with `allow_private` False so are private and special addresses.
    """
    ip = normalised(ip)
    if ip in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if any(ip in net for net in ALWAYS_REFUSED_NETWORKS if net.version == ip.version):
        return "a link-local address"
    inner = _embedded_ipv4s(ip)
    # Refusals in every mode first, so the worst reason is the one named.
    for mode in dict.fromkeys((True, allow_private)):
        for candidate in inner:
            reason = refusal_reason(candidate, mode)
            if reason is not None:
                return f"{reason} ({candidate} inside {ip})"
    if allow_private:
        return None
    if inner and any(ip in form for form in IPV4_HOST_FORMS):
        return None  # the IPv4 host itself, already judged above
    for attribute, reason in _PRIVATE_CHECKS:
        if getattr(ip, attribute):
            return reason
    if not ip.is_global:
        return "not a public address"
    return None


class Watchdog:
    """Shuts the sockets it watches down once the overall deadline passes.

    Socket timeouts restart with every byte received, so a server trickling its
    status line, a header or a chunk-size line one byte a second would outlast
    any of them; shutting the socket down ends whatever read is blocked.
    """

    def __init__(self, seconds: float) -> None:
        self.fired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(max(0.0, seconds), self._fire)
        self._timer.daemon = True
        self._timer.start()

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)
            fired = self.fired
        if fired:
            _shut(sock)

    def _fire(self) -> None:
        with self._lock:
            self.fired = True
            sockets = list(self._sockets)
        for sock in sockets:
            _shut(sock)

    def cancel(self) -> None:
        self._timer.cancel()


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class _WatchedConnection:
    """Mixin: hands each new socket to the pool's watchdog before anything is read from it."""

    watchdog: Watchdog | None = None

    def _new_conn(self):
        sock = super()._new_conn()
        if self.watchdog is not None:
            self.watchdog.watch(sock)
        return sock


class _HTTPConnection(_WatchedConnection, urllib3.connection.HTTPConnection):
    pass


class _HTTPSConnection(_WatchedConnection, urllib3.connection.HTTPSConnection):
    pass


class _WatchedPool:
    """Mixin: gives every connection it creates the pool's watchdog."""

    watchdog: Watchdog | None = None

    def _new_conn(self):
        conn = super()._new_conn()
        conn.watchdog = self.watchdog
        return conn


class _HTTPPool(_WatchedPool, urllib3.HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(_WatchedPool, urllib3.HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


@dataclass(frozen=True)
class Target:
    """One vetted hop: where to connect and what to call the host."""

    url: str
    scheme: str
    hostname: str  # for SNI and the certificate check (no brackets)
    host_header: str
    port: int
    path: str  # path + query, as sent in the request line
    address: str  # the vetted IP we connect to


class _Refused(Exception):
    """Why a URL may not be fetched, worded for the user's own URL (`message`) and for a
    redirect's Location (`unusable`: the Location itself is broken; else `which`, the
    end of "... redirects to <url>, which is ...")."""

    def __init__(self, message: str, unusable: bool = False, which: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.unusable = unusable
        self.which = which


def _unusable(message: str) -> _Refused:
    return _Refused(message, unusable=True)


# A host name as the resolver may see it (after IDNA): letters, digits, "-", "_", ".".
HOST_NAME = re.compile(r"[a-z0-9_.-]+")
# userinfo@ then a bracketed IPv6 literal with an optional port, or no brackets at all.
NETLOC = re.compile(r"(?:[^@]*@)?(?:\[[^\[\]]*\](?::[^\[\]]*)?|[^\[\]]*)")
# Kept as they are in the request line; anything else (spaces, non-ASCII) is %-encoded.
PATH_SAFE = "/:@!$&'()*+,;=-._~%?[]"


class UrlFetcher:
    """Fetches image bytes from public http(s) URLs; thread-safe, holds no connections."""

    def __init__(
        self,
        timeout: float = 5.0,
        max_bytes: int = 10 * 1024 * 1024,
        allow_private: bool = False,
        allowed_networks: Iterable[str] = (),
        max_redirects: int = MAX_REDIRECTS,
        ca_certs: str | None = None,
    ) -> None:
        self.timeout = float(timeout)
        self.max_bytes = int(max_bytes)
        self.allow_private = bool(allow_private)
        # Networks an operator trusts despite being private (an internal image store).
        self.allowed_networks = tuple(ipaddress.ip_network(n) for n in allowed_networks)
        self.max_redirects = int(max_redirects)
        # CA bundle for https (default: certifi's, else the system's); an internal CA can go here.
        self.ca_certs = ca_certs or _ca_bundle()

    # -- vetting (no connection is made here) ---------------------------------

    def vet(self, url: str, deadline: float | None = None) -> Target:
        """Parse, resolve and vet `url`; raises UrlRefused (or FetchFailed if unresolvable)."""
        try:
            return self._vet(url, deadline)
        except _Refused as exc:
            raise UrlRefused(exc.message) from None

    def _vet(self, url: str, deadline: float | None = None) -> Target:
        """vet(), raising _Refused, so a redirect can word the refusal as the server's fault."""
        if deadline is None:
            deadline = time.monotonic() + self.timeout
        if not isinstance(url, str) or not url.strip():
            raise _unusable("the URL is empty")
        url = url.strip()
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in url):
            raise _unusable("the URL contains a control character")
        try:
            parts = urlsplit(url)
            port = parts.port
            if not NETLOC.fullmatch(parts.netloc):
                raise ValueError(f"malformed host part {parts.netloc!r}")
        except ValueError as exc:
            raise _unusable(f"not a valid URL: {exc}") from None
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            shown = f"{scheme}://" if scheme else "a URL without a scheme"
            raise _unusable(f"only http:// and https:// URLs are accepted, not {shown}")
        hostname = (parts.hostname or "").rstrip(".")
        if not hostname:
            raise _unusable("the URL has no host name")
        try:
            ascii_host = hostname.encode("idna").decode("ascii").lower()
        except UnicodeError:
            raise _unusable(f"invalid host name {hostname!r}") from None
        if not (_is_ip_literal(ascii_host) or HOST_NAME.fullmatch(ascii_host)):
            raise _unusable(f"invalid host name {hostname!r}")
        if ascii_host in METADATA_HOSTS:
            raise _Refused(
                f"{hostname} is a cloud metadata service",
                which=", which is a cloud metadata service",
            )
        if port == 0:
            raise _unusable("port 0 is not a port one can connect to")
        port = port or (443 if scheme == "https" else 80)
        addresses = self._resolve(ascii_host, port, deadline)
        for ip in addresses:
            reason = self._refusal(ip)
            if reason is not None:
                literal = len(addresses) == 1 and _is_ip_literal(ascii_host)
                shown = hostname if literal else f"{hostname} resolves to {ip}, which"
                which = "" if literal else f", whose host {hostname} resolves to {ip}"
                raise _Refused(f"{shown} is {reason}; refusing to fetch it",
                               which=f"{which}, which is {reason}")  # fmt: skip
        default_port = 443 if scheme == "https" else 80
        bracketed = f"[{ascii_host}]" if ":" in ascii_host else ascii_host
        host_header = bracketed if port == default_port else f"{bracketed}:{port}"
        path = parts.path or "/"
        if parts.query:
            path = f"{path}?{parts.query}"
        path = quote(path, safe=PATH_SAFE)  # as browsers send them: spaces, non-ASCII %-encoded
        return Target(url, scheme, ascii_host, host_header, port, path, str(addresses[0]))

    def _refusal(self, ip: IPAddress) -> str | None:
        reason = refusal_reason(ip, allow_private=True)  # refused whatever the settings
        if reason is not None:
            return reason
        if any(normalised(ip) in net for net in self.allowed_networks):
            return None
        return refusal_reason(ip, self.allow_private)

    def _resolve(self, host: str, port: int, deadline: float) -> list[IPAddress]:
        try:
            return [ipaddress.ip_address(host)]
        except ValueError:
            pass
        result: dict[str, object] = {}

        def lookup() -> None:
            try:
                result["infos"] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except (OSError, UnicodeError) as exc:
                result["error"] = exc

        # getaddrinfo has no timeout of its own: run it where we can stop waiting.
        worker = threading.Thread(target=lookup, name=f"resolve {host}", daemon=True)
        worker.start()
        worker.join(max(0.0, deadline - time.monotonic()))
        if worker.is_alive():
            raise FetchFailed(f"resolving {host} took longer than {self.timeout:g} s")
        if "error" in result:
            raise FetchFailed(f"cannot resolve host {host}: {result['error']}")
        addresses = []
        for _family, _type, _proto, _canon, sockaddr in result["infos"]:
            ip = ipaddress.ip_address(sockaddr[0].split("%", 1)[0])
            if ip not in addresses:
                addresses.append(ip)
        if not addresses:
            raise FetchFailed(f"host {host} has no addresses")
        return addresses

    # -- fetching ---------------------------------------------------------------

    def fetch(self, url: str) -> bytes:
        """The body of `url` after at most `max_redirects` vetted redirects."""
        deadline = time.monotonic() + self.timeout
        target = self.vet(url, deadline)  # the user's own URL: refusals are theirs (422)
        for hop in range(self.max_redirects + 1):
            location = self._get(target, deadline)
            if isinstance(location, bytes):
                return location
            if hop == self.max_redirects:
                break
            target = self._vet_redirect(target, location, deadline)
        raise FetchFailed(f"{url} redirects more than {self.max_redirects} times")

    def _vet_redirect(self, target: Target, location: str, deadline: float) -> Target:
        """The next hop; a Location that is unusable or refused is the server's fault (502)."""
        try:
            current = urljoin(target.url, location.strip())
        except ValueError as exc:
            raise FetchFailed(
                f"{target.url} redirects to an unusable Location {location!r}: {exc}"
            ) from None
        try:
            return self._vet(current, deadline)
        except _Refused as exc:
            if exc.unusable:
                raise FetchFailed(
                    f"{target.url} redirects to an unusable Location {location!r}: {exc.message}"
                ) from None
            raise FetchFailed(f"{target.url} redirects to {current}{exc.which}") from None

    def _get(self, target: Target, deadline: float) -> bytes | str:
        """Body bytes, or the Location of a redirect."""
        remaining = self._remaining(deadline, target)
        options = {"port": target.port, "maxsize": 1, "retries": False}
        if target.scheme == "https":
            pool: urllib3.HTTPConnectionPool = _HTTPSPool(
                target.address,
                server_hostname=target.hostname,
                assert_hostname=target.hostname,
                cert_reqs="CERT_REQUIRED",
                ca_certs=self.ca_certs,
                **options,
            )
        else:
            pool = _HTTPPool(target.address, **options)
        watchdog = pool.watchdog = Watchdog(remaining)
        headers = {
            "Host": target.host_header,
            "User-Agent": USER_AGENT,
            "Accept": "image/*, */*;q=0.5",
            "Accept-Encoding": "identity",
        }
        try:
            response = pool.urlopen(
                "GET",
                target.path,
                headers=headers,
                redirect=False,
                retries=False,
                preload_content=False,
                assert_same_host=False,
                timeout=urllib3.Timeout(connect=remaining, read=remaining),
            )
            try:
                if response.status in REDIRECT_STATUSES:
                    location = response.headers.get("Location")
                    if not location:
                        raise FetchFailed(f"{target.url} redirects without a Location")
                    return location
                if response.status != 200:
                    raise FetchFailed(f"{target.url} answered HTTP {response.status}")
                return self._read_body(response, target, deadline, watchdog)
            finally:
                response.release_conn()
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            slow = watchdog.fired or (
                isinstance(exc, urllib3.exceptions.TimeoutError)
                and not isinstance(exc, urllib3.exceptions.NewConnectionError)
            )
            if slow:
                raise self._too_slow(target) from None
            raise FetchFailed(f"cannot fetch {target.url}: {_short(exc)}") from None
        finally:
            watchdog.cancel()
            pool.close()

    def _read_body(self, response, target: Target, deadline: float, watchdog: Watchdog) -> bytes:
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            raise TooLarge(
                f"{target.url} is {int(declared):,} bytes; the limit is {self.max_bytes:,}"
            )
        body = bytearray()
        while True:
            remaining = self._remaining(deadline, target)
            sock = getattr(getattr(response, "connection", None), "sock", None)
            if sock is not None:  # each read also ends at the overall deadline
                sock.settimeout(remaining)
            chunk = response.read1(CHUNK_BYTES, decode_content=False)
            if not chunk:
                if watchdog.fired:  # the end came from the watchdog, not from the server
                    raise self._too_slow(target)
                return bytes(body)
            body += chunk
            if len(body) > self.max_bytes:
                raise TooLarge(f"{target.url} is larger than the limit of {self.max_bytes:,} bytes")

    def _remaining(self, deadline: float, target: Target) -> float:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise self._too_slow(target)
        return remaining

    def _too_slow(self, target: Target) -> FetchFailed:
        return FetchFailed(f"fetching {target.url} took longer than {self.timeout:g} s")


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _ca_bundle() -> str | None:
    try:
        import certifi
    except ImportError:  # urllib3 then uses the system's trust store
        return None
    return certifi.where()


def _short(exc: BaseException) -> str:
    """The innermost reason of a urllib3 error, without the pool's object reprs."""
    reason = getattr(exc, "reason", None) or exc
    text = str(reason)
    if text.startswith("HTTP") and "): " in text:  # "HTTPConnection(host=..., port=...): why"
        text = text.split("): ", 1)[1]
    elif ": " in text and "object at 0x" in text:
        text = text.split(": ", 1)[1]
    return text or type(exc).__name__
