"""The URL fetcher: SSRF vetting (before any connection), redirects, caps and deadlines.

Refused addresses are checked where they are vetted; an audit hook records every
socket connect this process attempts, proving the refused ones were never tried.
URLs that must be fetched point at a real local web server on 127.0.0.1.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import sys
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devtools.stack import PhotoServer
from kitchenware.gateway.errors import FetchFailed, TooLarge, UrlRefused
from kitchenware.gateway.fetch import UrlFetcher, refusal_reason

REAL_GETADDRINFO = socket.getaddrinfo
CONNECTS: list[tuple] = []
_RECORDING = [False]


def _audit(event: str, args) -> None:
    if _RECORDING[0] and event == "socket.connect":
        CONNECTS.append(args[1])


sys.addaudithook(_audit)


@pytest.fixture
def connects():
    """Socket connects made by this process while the test runs."""
    CONNECTS.clear()
    _RECORDING[0] = True
    yield CONNECTS
    _RECORDING[0] = False


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("site")
    (root / "photo.jpg").write_bytes(b"\xff\xd8 not really a jpeg but bytes")
    with PhotoServer(root, big_bytes=300_000) as server:
        yield server


SSRF_URLS = [
    "http://127.0.0.1/",
    "http://127.0.0.1:9696/predict",
    "http://localhost/",
    "http://10.0.0.1/",
    "http://172.16.5.4/",
    "http://192.168.1.1/",
    "http://169.254.169.254/latest/meta-data/",
    "http://[::1]/",
    "http://[::ffff:127.0.0.1]/",
    "http://[::ffff:169.254.169.254]/",
    "http://[fe80::1]/",
    "http://[fd00:ec2::254]/",
    "http://0.0.0.0/",
    "http://2130706433/",
    "http://0x7f.0.0.1/",
    "http://100.64.0.1/",
    "http://224.0.0.1/",
    "http://metadata.google.internal/computeMetadata/v1/",
]


@pytest.mark.parametrize("url", SSRF_URLS)
def test_private_and_special_addresses_are_refused_without_connecting(url, connects):
    with pytest.raises(UrlRefused):
        UrlFetcher().fetch(url)
    assert connects == []


@pytest.mark.parametrize(
    "url", ["file:///etc/passwd", "ftp://example.com/a.jpg", "gopher://x/", "//x/a.jpg", "x"]
)
def test_only_http_and_https_are_accepted(url, connects):
    with pytest.raises(UrlRefused, match="only http:// and https://"):
        UrlFetcher().fetch(url)
    assert connects == []


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://[fd00:ec2::254]/",
        "http://[fd00:ec2::254%251]/",  # a zone id names a link, not another address
        "http://[fd00:ec2::254%25eth0]/",
        "http://169.254.170.2/v2/credentials",  # ECS task credentials
        "http://169.254.170.23/v1/credentials",  # EKS Pod Identity agent
        "http://[fd00:ec2::23]/v1/credentials",
        "http://[::a9fe:a9fe]/",  # IPv4-compatible form of 169.254.169.254
        "http://[::ffff:169.254.169.254]/",
        "http://[64:ff9b::a9fe:a9fe]/",
        "http://[::5efe:169.254.169.254]/",  # ISATAP interface id
        "http://100.100.100.200/latest/meta-data/",
        "http://192.0.0.192/",
        "http://169.254.1.1/",  # any link-local address
    ],
)
def test_cloud_credential_endpoints_are_refused_even_when_private_urls_are_allowed(url, connects):
    with pytest.raises(UrlRefused, match="metadata|link-local"):
        UrlFetcher(allow_private=True).fetch(url)
    assert connects == []


def test_port_zero_is_refused_not_taken_for_the_default_port(connects):
    with pytest.raises(UrlRefused, match="port 0"):
        UrlFetcher(allow_private=True).fetch("http://127.0.0.1:0/photo.jpg")
    assert connects == []


@pytest.mark.parametrize(
    "address, refused",
    [
        ("8.8.8.8", False),
        ("2001:4860:4860::8888", False),
        ("127.0.0.2", True),
        ("::", True),
        ("ff02::1", True),
        ("fc00::1", True),
        ("::ffff:10.1.2.3", True),
        ("64:ff9b::a00:1", True),  # NAT64 form of 10.0.0.1
        ("2002:7f00:1::", True),  # 6to4 form of 127.0.0.1
        ("240.0.0.1", True),
        ("198.18.0.1", True),
    ],
)
def test_refusal_reason(address, refused):
    assert (refusal_reason(ipaddress.ip_address(address)) is not None) is refused


def test_loopback_is_fetched_when_private_urls_are_allowed(site, connects):
    body = UrlFetcher(allow_private=True).fetch(f"{site.url}/photo.jpg")
    assert body == (site.root / "photo.jpg").read_bytes()
    assert connects == [("127.0.0.1", site.port)]


def test_host_name_is_resolved_and_connection_goes_to_the_vetted_address(site, connects):
    target = UrlFetcher(allow_private=True).vet(f"http://localhost:{site.port}/photo.jpg")
    assert ipaddress.ip_address(target.address).is_loopback
    assert target.host_header == f"localhost:{site.port}"
    body = UrlFetcher(allow_private=True).fetch(f"http://localhost:{site.port}/photo.jpg")
    assert body.startswith(b"\xff\xd8")
    assert all(ipaddress.ip_address(host).is_loopback for host, *_ in connects)


def test_redirects_are_followed_and_each_hop_is_vetted(site, connects):
    fetcher = UrlFetcher(allowed_networks=["127.0.0.0/8"])  # trust only the local test site
    hop = f"{site.url}/redirect?to={quote(site.url + '/photo.jpg', safe='')}"
    assert fetcher.fetch(hop).startswith(b"\xff\xd8")
    connects.clear()
    to_private = f"{site.url}/redirect?to={quote('http://10.0.0.1/x.jpg', safe='')}"
    # The user's URL was fine; its server's answer was not: a 502, not the user's 422.
    with pytest.raises(FetchFailed, match="redirects to http://10.0.0.1/x.jpg, which is a priv"):
        fetcher.fetch(to_private)
    assert connects == [("127.0.0.1", site.port)]  # the first hop only, never 10.0.0.1


def test_a_url_on_a_private_address_is_refused_before_its_redirect_is_seen(site, connects):
    to_private = f"{site.url}/redirect?to={quote('http://10.0.0.1/', safe='')}"
    hits = site.hits
    with pytest.raises(UrlRefused, match="loopback"):
        UrlFetcher().fetch(to_private)
    assert connects == []
    assert site.hits == hits  # the loopback first hop is itself refused: nothing was sent


def test_more_than_three_redirects_fail(site):
    url = f"{site.url}/photo.jpg"
    for _ in range(4):
        url = f"{site.url}/redirect?to={quote(url, safe='')}"
    with pytest.raises(FetchFailed, match="redirects more than 3 times"):
        UrlFetcher(allow_private=True).fetch(url)


def test_download_is_capped_without_content_length(site):
    with pytest.raises(TooLarge, match="larger than the limit of 100,000 bytes"):
        UrlFetcher(allow_private=True, max_bytes=100_000).fetch(f"{site.url}/big")


def test_download_refused_early_from_content_length(site):
    with pytest.raises(TooLarge, match="the limit is 10"):
        UrlFetcher(allow_private=True, max_bytes=10).fetch(f"{site.url}/photo.jpg")


def test_slow_download_stops_at_the_overall_deadline(site):
    # The server sends a byte every 0.2 s: each read succeeds, only the deadline stops it.
    with pytest.raises(FetchFailed, match="took longer than 1 s"):
        UrlFetcher(allow_private=True, timeout=1.0).fetch(f"{site.url}/slow")


@pytest.mark.parametrize("stage", ["status", "header", "chunk"])
def test_a_trickling_server_cannot_outlast_the_deadline(stage):
    """One byte a second restarts every socket timeout; the wall-clock budget still holds."""
    from support.hostile import TricklingServer

    with TricklingServer(interval=0.5, total_s=20) as server:
        # Without a wall-clock budget the fetch ends only when the server gives up
        # after 20 s, as a broken connection ("cannot fetch"), not as a timeout.
        with pytest.raises(FetchFailed, match="took longer than 1.5 s"):
            UrlFetcher(allow_private=True, timeout=1.5).fetch(server.url(stage))


def test_http_errors_and_dead_ports_are_fetch_failures(site):
    from devtools.stack import free_port

    fetcher = UrlFetcher(allow_private=True)
    with pytest.raises(FetchFailed, match="HTTP 404"):
        fetcher.fetch(f"{site.url}/missing.jpg")
    with pytest.raises(FetchFailed, match="cannot fetch"):
        fetcher.fetch(f"http://127.0.0.1:{free_port()}/a.jpg")
    with pytest.raises(FetchFailed, match="cannot resolve"):
        fetcher.fetch("http://no-such-host.invalid/a.jpg")


@pytest.fixture(scope="module")
def tls_site(site, tmp_path_factory):
    """The local site behind TLS with a certificate for the name `localhost` only."""
    import shutil
    import ssl
    import subprocess
    import threading
    from http.server import ThreadingHTTPServer

    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    names: list[str | None] = []
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.sni_callback = lambda sock, name, ctx: names.append(name)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), site.httpd.RequestHandlerClass)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield {"port": httpd.server_address[1], "cert": str(cert), "sni": names}
    httpd.shutdown()
    httpd.server_close()


def test_https_connects_to_the_vetted_ip_with_the_host_name_for_sni_and_certificate(
    tls_site, connects
):
    fetcher = UrlFetcher(allow_private=True, ca_certs=tls_site["cert"])
    body = fetcher.fetch(f"https://localhost:{tls_site['port']}/photo.jpg")
    assert body.startswith(b"\xff\xd8")
    assert tls_site["sni"][-1] == "localhost"  # the name, although we dialled an IP
    assert all(ipaddress.ip_address(host).is_loopback for host, *_ in connects)
    # The certificate names `localhost`, not 127.0.0.1: the name check is really made.
    with pytest.raises(FetchFailed, match="cannot fetch"):
        fetcher.fetch(f"https://127.0.0.1:{tls_site['port']}/photo.jpg")
    # And an unknown CA is refused.
    with pytest.raises(FetchFailed):
        UrlFetcher(allow_private=True).fetch(f"https://localhost:{tls_site['port']}/photo.jpg")


# -- a hostile server's Location (issue 21): a 502 naming the problem, never a 500 -----


@pytest.fixture(scope="module")
def redirector():
    from support.hostile import RedirectServer

    with RedirectServer() as server:
        yield server


UNUSABLE_LOCATIONS = [
    (b"http://[::1", r"redirects to an unusable Location 'http://\[::1': Invalid IPv6 URL"),
    (b"http://[::1]x/", "redirects to an unusable Location .*not a valid URL"),
    (b"http://127.0.0.1:99999/", "redirects to an unusable Location .*[Pp]ort"),
    (b"http://127.0.0.1:0/a.jpg", "redirects to an unusable Location .*port 0"),
    (b"ftp://example.com/a.jpg", "redirects to an unusable Location .*only http:// and https://"),
    (b"javascript:alert(1)", "redirects to an unusable Location .*only http:// and https://"),
    (b"http://:80/a.jpg", "redirects to an unusable Location .*no host name"),
    (b"http://a\x01b/a.jpg", "redirects to an unusable Location .*control character"),
    (b"http://a b/a.jpg", "redirects to an unusable Location .*invalid host name"),
    (b"http://127.0.0.1/a\x00b.jpg", "redirects to an unusable Location .*control character"),
    (b"http://169.254.169.254/latest/meta-data/",
     "redirects to http://169.254.169.254/latest/meta-data/, which is a cloud metadata address"),
    (b"http://[::ffff:0:a9fe:a9fe]/", "which is a cloud metadata address"),
    (b"http://169.254.1.1/", "which is a link-local address"),
    (b"http://10.0.0.1/", "redirects to http://10.0.0.1/, which is a private address"),
    (b"http://metadata.google.internal/", "which is a cloud metadata service"),
    (b"", "redirects without a Location"),
]  # fmt: skip


@pytest.mark.parametrize("location, message", UNUSABLE_LOCATIONS)
def test_an_unusable_or_unsafe_redirect_is_a_502_naming_the_problem(
    redirector, connects, location, message
):
    redirector.location = location
    fetcher = UrlFetcher(allowed_networks=["127.0.0.0/8"])  # trust only the local server
    with pytest.raises(FetchFailed, match=message) as caught:
        fetcher.fetch(redirector.url)
    assert caught.value.status == 502 and caught.value.code == "fetch_failed"
    assert caught.value.message.startswith(f"{redirector.url} redirects")
    assert connects == [("127.0.0.1", redirector.port)]  # the first hop only


def _numeric_loopback_getaddrinfo(real):
    """getaddrinfo that never asks DNS (AI_NUMERICHOST) and answers loopback only."""

    def getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):
        infos = real(host, port, family, type, proto, flags | socket.AI_NUMERICHOST)
        for *_, sockaddr in infos:
            if not ipaddress.ip_address(sockaddr[0].split("%", 1)[0]).is_loopback:
                raise socket.gaierror(socket.EAI_NONAME, f"test resolver: {host} is not loopback")
        return infos

    return getaddrinfo


def _locations():
    """Location values a hostile server might send: URL-shaped ones built from IP
    literals (every IPv6 form, zone ids), names and garbage, plus raw bytes."""
    hosts = st.one_of(
        st.ip_addresses(v=4).map(str),
        st.ip_addresses(v=6).map(lambda ip: f"[{ip}]"),
        st.ip_addresses(v=6).map(lambda ip: f"[{ip}%25eth0]"),
        st.sampled_from(["127.0.0.1", "[::1]", "[::1", "::1]", "localhost", "metadata.goog",
                         "169.254.169.254", "[::ffff:0:a9fe:a9fe]", "0", "0x7f.1", "", "@",
                         "user:pw@127.0.0.1", "xn--", "a..b", "[v1.x]"]),
        st.text(max_size=12),
    )  # fmt: skip
    ports = st.one_of(
        st.just(""),
        st.integers(-2, 70000).map(lambda p: f":{p}"),
        st.text(alphabet=":0123456789x ", max_size=6),
    )
    schemes = st.sampled_from(["http://", "https://", "HTTP://", "//", "ftp://", "http:", "", " "])
    paths = st.text(max_size=12)
    shaped = st.builds(lambda *parts: "".join(parts), schemes, hosts, ports, paths).map(
        lambda text: text.encode("utf-8", "surrogatepass")
    )
    raw = st.binary(max_size=40).map(lambda b: b.replace(b"\r\n", b" "))
    return st.one_of(shaped, shaped, raw)


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
@given(location=_locations())
def test_fuzzed_redirect_locations_only_ever_raise_gateway_errors(
    redirector, monkeypatch, location
):
    """Whatever Location a server sends, the fetch ends in FetchFailed, UrlRefused or
    TooLarge (a JSON 4xx/5xx), never in another exception (a 500).

    Safety: no fuzzed Location may send a packet off this machine. Host names would be
    looked up in DNS, so getaddrinfo is replaced, for this test, by one that passes
    AI_NUMERICHOST (names fail without any lookup; IP literals parse locally) and
    refuses any non-loopback answer, so a public IP literal that passes vetting is
    never connected to either. Every connect this process makes is recorded and must
    be to loopback; the netguard audit hook would refuse any other one anyway.
    """
    monkeypatch.setattr(socket, "getaddrinfo", _numeric_loopback_getaddrinfo(REAL_GETADDRINFO))
    redirector.location = location
    fetcher = UrlFetcher(allow_private=False, allowed_networks=["127.0.0.0/8"], timeout=5)
    CONNECTS.clear()
    _RECORDING[0] = True
    try:
        with pytest.raises((FetchFailed, UrlRefused, TooLarge)):
            fetcher.fetch(redirector.url)
    finally:
        _RECORDING[0] = False
    # 127.0.0.0/8 is trusted here, so a Location may lead to another loopback port.
    assert all(ipaddress.ip_address(address[0]).is_loopback for address in CONNECTS), CONNECTS


# -- IPv6 spellings of IPv4 addresses (issue 21) ----------------------------------------


def _v4(address: str) -> int:
    return int(ipaddress.IPv4Address(address))


def _rfc6052(prefix: str, length: int, address: str) -> str:
    """`address` embedded in the NAT64 `prefix` of `length` bits (RFC 6052 section 2.2):
    the IPv4 bits skip bits 64-71 (the "u" octet)."""
    v4 = _v4(address)
    value = int(ipaddress.IPv6Address(prefix))
    if length == 96:
        value |= v4
    else:
        before = 64 - length  # IPv4 bits that fit before the u octet
        high, low = v4 >> (32 - before), v4 & ((1 << (32 - before)) - 1)
        value |= high << 64
        value |= low << (56 - (32 - before))
    return str(ipaddress.IPv6Address(value))


def _teredo(server: str, client: str) -> str:
    value = (0x20010000 << 96) | (_v4(server) << 64) | (0xFFFF << 32) | (_v4(client) ^ 0xFFFFFFFF)
    return str(ipaddress.IPv6Address(value))


def spellings(address: str) -> dict[str, str]:
    """`address` in every IPv6 form that embeds or translates an IPv4 address."""
    a, b, c, d = (int(x) for x in address.split("."))
    forms = {
        "mapped": f"::ffff:{address}",
        "compatible": f"::{address}",
        "translated": f"::ffff:0:{address}",  # RFC 2765 / SIIT
        "nat64": f"64:ff9b::{address}",
        "6to4": f"2002:{a:02x}{b:02x}:{c:02x}{d:02x}::1",
        "teredo-client": _teredo("65.54.227.120", address),
        "teredo-server": _teredo(address, "8.8.4.4"),
        "isatap": f"2600::5efe:{address}",
        "isatap-global": f"2600::200:5efe:{address}",
    }
    for length in (48, 56, 64, 96):
        forms[f"nat64-local/{length}"] = _rfc6052("64:ff9b:1::", length, address)
    return forms


def test_the_reported_spellings_are_among_the_table():
    table = {ipaddress.ip_address(a) for a in spellings("169.254.169.254").values()}
    assert ipaddress.ip_address("::ffff:0:a9fe:a9fe") in table
    assert ipaddress.ip_address("64:ff9b:1:a9fe:a9:fe00::") in table


ALWAYS_REFUSED = [
    (f"{inner} as {form}", spelled)
    for inner in ("169.254.169.254", "169.254.1.1", "169.254.170.2")
    for form, spelled in spellings(inner).items()
]


@pytest.mark.parametrize("allowed", [(), ("::/0", "0.0.0.0/0")], ids=["plain", "all-allowed"])
@pytest.mark.parametrize("allow_private", [False, True], ids=["public-only", "private-allowed"])
@pytest.mark.parametrize(
    "address", [a for _, a in ALWAYS_REFUSED], ids=[i for i, _ in ALWAYS_REFUSED]
)
def test_metadata_and_link_local_are_refused_in_every_ipv6_spelling(
    address, allow_private, allowed, connects
):
    reason = refusal_reason(ipaddress.ip_address(address), allow_private=allow_private)
    assert reason is not None and re.search("metadata|link-local", reason), reason
    fetcher = UrlFetcher(allow_private=allow_private, allowed_networks=allowed)
    with pytest.raises(UrlRefused, match="metadata|link-local"):
        fetcher.vet(f"http://[{address}]/latest/meta-data/")
    assert connects == []


PRIVATE_SPELLED = [
    (f"{inner} as {form}", spelled)
    for inner in ("10.0.0.1", "127.0.0.1", "192.168.1.1")
    for form, spelled in spellings(inner).items()
]


@pytest.mark.parametrize(
    "address", [a for _, a in PRIVATE_SPELLED], ids=[i for i, _ in PRIVATE_SPELLED]
)
def test_private_addresses_are_refused_in_every_ipv6_spelling_by_default(address, connects):
    assert refusal_reason(ipaddress.ip_address(address)) is not None
    with pytest.raises(UrlRefused):
        UrlFetcher().vet(f"http://[{address}]/")
    assert connects == []


# A public IPv4 address in each form, with private URLs refused. Allowed: the forms that
# name the IPv4 host itself (mapped: the host's own stack; NAT64 64:ff9b::/96: what
# DNS64 answers for every IPv4-only site in an IPv6-only cluster) and tunnels under a
# global prefix (6to4, ISATAP). Refused: the deprecated IPv4-compatible form, SIIT's
# translated form and the local-use NAT64 prefix (never on the Internet), and Teredo
# (2001::/32 is not globally reachable).
PUBLIC_ALLOWED = {
    "mapped": True, "compatible": False, "translated": False, "nat64": True, "6to4": True,
    "teredo-client": False, "teredo-server": False, "isatap": True, "isatap-global": True,
    "nat64-local/48": False, "nat64-local/56": False, "nat64-local/64": False,
    "nat64-local/96": False,
}  # fmt: skip


@pytest.mark.parametrize("form, address", spellings("8.8.8.8").items())
def test_a_public_address_in_an_ipv6_spelling_is_judged_as_documented(form, address):
    reason = refusal_reason(ipaddress.ip_address(address))
    assert (reason is None) is PUBLIC_ALLOWED[form], reason
    assert refusal_reason(ipaddress.ip_address(address), allow_private=True) is None
