"""The URL fetcher: SSRF vetting (before any connection), redirects, caps and deadlines.

Refused addresses are checked where they are vetted; an audit hook records every
socket connect this process attempts, proving the refused ones were never tried.
URLs that must be fetched point at a real local web server on 127.0.0.1.
"""

from __future__ import annotations

import ipaddress
import sys
from urllib.parse import quote

import pytest

from devtools.stack import PhotoServer
from kitchenware.gateway.errors import FetchFailed, TooLarge, UrlRefused
from kitchenware.gateway.fetch import UrlFetcher, refusal_reason

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
    with pytest.raises(UrlRefused, match="10.0.0.1 is a private address"):
        fetcher.fetch(to_private)
    assert connects == [("127.0.0.1", site.port)]  # the first hop only, never 10.0.0.1


def test_redirect_to_a_private_address_is_refused_by_default(site, connects):
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
