"""The proxy in front of gunicorn as the deployments configure it, checked with the real nginx.

Offline: the template rendered with compose's and the pod's values must pass
`nginx -t`; the image's entrypoint (proxy/render.sh) must render and start it,
and stop with one clear line when a value is missing; and the numbers the proxy
and gunicorn must agree on (body limit, the upstream bound) agree everywhere.
"""

from __future__ import annotations

import os
import signal
import subprocess

import pytest
from support.deploy_tools import base_docs, compose, containers, env_of

from devtools.stack import (
    PAGE_ROOT,
    PROBE_RESERVE_THREADS,
    PROXY_DIR,
    StackError,
    copy_proxy_includes,
    free_port,
    http_status,
    nginx_binary,
    render_proxy_config,
    wait_for,
)
from kitchenware.gateway.config import Settings


def deployed_pairs() -> dict[str, tuple[dict[str, str], dict[str, str]]]:
    """{where: (gateway env, proxy env)} for compose and the Kubernetes pod."""
    services = compose()["services"]
    gateway, proxy = containers(base_docs()[("Deployment", "gateway")])
    as_text = lambda env: {k: str(v) for k, v in env.items()}  # noqa: E731
    return {
        "compose": (as_text(services["gateway"]["environment"]),
                    as_text(services["proxy"]["environment"])),
        "kubernetes": (env_of(gateway), env_of(proxy)),
    }  # fmt: skip


def image_defaults() -> dict[str, str]:
    from support.deploy_tools import PROXY_DOCKERFILE, dockerfile_env

    return dockerfile_env(PROXY_DOCKERFILE)


@pytest.mark.parametrize("where", ["compose", "kubernetes"])
def test_proxy_and_gateway_agree_on_the_body_limit_and_the_upstream_bound(where):
    gateway, proxy = deployed_pairs()[where]
    limit = proxy["MAX_REQUEST_BYTES"]
    assert gateway["MAX_REQUEST_BYTES"] == limit
    assert int(limit) == Settings().max_request_bytes  # the gateway's own default, too
    threads = int(gateway["GUNICORN_WORKERS"]) * int(gateway["GUNICORN_THREADS"])
    assert int(proxy["PROXY_UPSTREAM_CONNS"]) == threads - PROBE_RESERVE_THREADS


@pytest.mark.parametrize("where", ["compose", "kubernetes"])
def test_the_deployed_config_passes_nginx_t(where, tmp_path):
    _, proxy = deployed_pairs()[where]
    values = {**image_defaults(), **proxy, "PROXY_RUN_DIR": str(tmp_path)}
    # compose's `gateway` host resolves only on its network; nginx -t resolves upstreams.
    values["GATEWAY_UPSTREAM"] = "127.0.0.1:" + values["GATEWAY_UPSTREAM"].rsplit(":", 1)[1]
    (tmp_path / "nginx.conf").write_text(render_proxy_config(values))
    copy_proxy_includes(tmp_path)
    done = subprocess.run(
        [nginx_binary(), "-t", "-e", "stderr", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "test is successful" in done.stderr


def test_rendering_names_every_missing_value():
    with pytest.raises(StackError, match="set .*GATEWAY_UPSTREAM.*PROXY_PORT"):
        render_proxy_config({"PROXY_RUN_DIR": "/tmp/x"})


def entrypoint_env(tmp_path, **values) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PROXY_", "GATEWAY_"))}
    env["PATH"] = env.get("PATH", "") + ":/usr/sbin"
    return {**env, "PROXY_TEMPLATE_DIR": str(PROXY_DIR), **values}


def test_the_image_entrypoint_stops_with_one_line_naming_what_is_missing(tmp_path):
    env = entrypoint_env(tmp_path, PROXY_RUN_DIR=str(tmp_path / "run"), PROXY_PORT="1")
    done = subprocess.run(["sh", str(PROXY_DIR / "render.sh")], env=env,
                          capture_output=True, text=True, timeout=30)  # fmt: skip
    assert done.returncode == 64
    assert done.stderr.strip().splitlines() == [
        "proxy: configuration error: set GATEWAY_UPSTREAM MAX_REQUEST_BYTES PROXY_BODY_TIMEOUT "
        "PROXY_HEADER_TIMEOUT PROXY_PAGE_ROOT PROXY_PROBE_PORT PROXY_UPSTREAM_CONNS"
    ]


def test_the_image_entrypoint_renders_and_runs_nginx(tmp_path):
    port, probe_port = free_port(), free_port()
    values = {**image_defaults(), "PROXY_RUN_DIR": str(tmp_path / "run"),
              "PROXY_PORT": f"127.0.0.1:{port}", "PROXY_PROBE_PORT": f"127.0.0.1:{probe_port}",
              "GATEWAY_UPSTREAM": f"127.0.0.1:{free_port()}", "MAX_REQUEST_BYTES": "1000",
              "PROXY_UPSTREAM_CONNS": "1", "PROXY_PAGE_ROOT": str(PAGE_ROOT)}  # fmt: skip
    entry = subprocess.Popen(["sh", str(PROXY_DIR / "render.sh")], env=entrypoint_env(tmp_path, **values),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        wait_for(lambda: http_status(f"http://127.0.0.1:{probe_port}/proxy-healthz") == 200, 15,
                 "the proxy's liveness endpoint")  # fmt: skip
        # Nothing listens upstream: the proxy's own 502, in JSON.
        assert http_status(f"http://127.0.0.1:{port}/predict") == 502
        assert http_status(f"http://127.0.0.1:{probe_port}/predict") == 404
        # The web page comes from the proxy itself: no gunicorn needed.
        assert http_status(f"http://127.0.0.1:{port}/") == 200
        assert http_status(f"http://127.0.0.1:{port}/static/app.js") == 200
        assert http_status(f"http://127.0.0.1:{port}/static/missing.js") == 404
    finally:
        entry.send_signal(signal.SIGTERM)
        output = entry.communicate(timeout=15)[0]
    assert "client" in output and '"status":502' in output, output[-2000:]


def test_the_proxy_sends_the_page_with_the_gateways_security_headers():
    """nginx serves the page (proxy/page.conf) with the headers the Flask app sends."""
    import re

    from kitchenware.gateway.app import SECURITY_HEADERS

    text = (PROXY_DIR / "page.conf").read_text()
    sent = dict(re.findall(r'^add_header (\S+) "([^"]*)" always;$', text, re.MULTILINE))
    assert sent == SECURITY_HEADERS
