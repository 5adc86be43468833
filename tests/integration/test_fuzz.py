"""Hostile input against a real gateway (gunicorn) and model server: never a 500.

Hypothesis generates the requests: random JSON, random bytes as images (upload, raw
body, base64), truncated and bit-flipped JPEG/PNG/GIF/WebP/BMP files, headers that
claim huge dimensions, wrong content types and oversized bodies. Every answer must
be a status that docu/openapi.yaml documents for POST /predict, with the JSON error
shape and the error code the spec gives that status. Then schemathesis checks the
whole spec against the same running gateway.

Nothing leaves this machine: ALLOW_PRIVATE_URLS stays false, and every generated
URL goes through fuzz_safety.safe_url (loopback or unparsable hosts only), so even
a broken address guard could not connect elsewhere or look a name up.
"""

from __future__ import annotations

import base64
import io
import os
import shutil
import socket
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import requests
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from support.fuzz_safety import safe_body, safe_url
from support.paths import REPO, guarded_gateway

from devtools.stack import ModelServer

pytestmark = pytest.mark.slow

SPEC_PATH = REPO / "docu" / "openapi.yaml"
MAX_IMAGE_BYTES = 200_000
MAX_REQUEST_BYTES = 600_000
MAX_IMAGE_PIXELS = 40_000_000  # the gateway's default
FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def documented_errors() -> dict[int, set[str]]:
    """{status: error codes} for POST /predict, read from docu/openapi.yaml."""
    spec = yaml.safe_load(SPEC_PATH.read_text())

    def resolve(node: dict) -> dict:
        while "$ref" in node:
            target = spec
            for part in node["$ref"].removeprefix("#/").split("/"):
                target = target[part]
            node = target
        return node

    codes = {}
    for status, response in spec["paths"]["/predict"]["post"]["responses"].items():
        if int(status) == 200:
            continue
        schema = resolve(resolve(response)["content"]["application/json"]["schema"])
        enums = [
            part["properties"]["error"]["properties"]["code"]["enum"]
            for part in schema.get("allOf", [])
            if "properties" in part
        ]
        assert len(enums) == 1, f"{status}: the spec gives no error code for it"
        codes[int(status)] = set(enums[0])
    return codes


DOCUMENTED = documented_errors()


@pytest.fixture(scope="module")
def gateway(exported_model, tmp_path_factory) -> str:
    work = tmp_path_factory.mktemp("fuzz")
    base = work / "models" / "kitchenware"
    shutil.copytree(exported_model, base)
    server = ModelServer(base, work)
    env = {
        "TF_SERVING_HOST": server.target,
        "ALLOW_PRIVATE_URLS": "false",  # the address guard stays on
        "URL_FETCH_TIMEOUT": "2",
        "MAX_IMAGE_BYTES": str(MAX_IMAGE_BYTES),
        "MAX_REQUEST_BYTES": str(MAX_REQUEST_BYTES),
        "GUNICORN_LOG_LEVEL": "warning",
    }
    gw = guarded_gateway(work, env, workers=1, threads=4)
    server.start()
    try:
        gw.start()
        server.wait_ready()
        yield gw.url
        gw.check_alive()  # nothing the fuzzers sent brought the gateway down
        assert "Traceback" not in gw.log(), gw.log()
    finally:
        gw.stop()
        server.stop()


def check(response: requests.Response) -> int:
    """The answer is documented: 200 with predictions, or an error status, shape and code."""
    status = response.status_code
    assert status == 200 or status in DOCUMENTED, f"undocumented {status}: {response.text[:300]}"
    assert response.headers["Content-Type"].startswith("application/json"), response.headers
    body = response.json()
    if status == 200:
        predictions = body["predictions"] if "predictions" in body else [body]
        for prediction in predictions:
            assert set(prediction) == {"label", "probability", "probabilities", "model"}
            assert sum(prediction["probabilities"].values()) == pytest.approx(1, abs=1e-4)
        return status
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert body["error"]["code"] in DOCUMENTED[status], (status, body)
    assert isinstance(body["error"]["message"], str) and body["error"]["message"], body
    assert "Traceback" not in response.text
    return status


def post(url: str, **kwargs) -> requests.Response:
    if "json" in kwargs:
        kwargs["json"] = safe_body(kwargs["json"])  # belt and braces: strategies are safe already
    return requests.post(url + "/predict", timeout=60, **kwargs)


# -- strategies -------------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=15,
)

# Only hosts that need no name lookup and are loopback, or URLs refused while parsing.
URL_SHAPES = [
    "http://127.0.0.1{port}/{path}", "https://127.{a}.{b}.{c}{port}/{path}",
    "http://localhost{port}/{path}", "http://[::1]{port}/{path}",
    "http://[::ffff:127.0.0.1]/{path}", "file:///{path}", "ftp://127.0.0.1/{path}",
    "gopher://localhost/{path}", "http://", "http:///{path}", "//127.0.0.1/{path}",
    "http://[::1/{path}", "http://127.0.0.1:99999/{path}", "http://user:pw@127.0.0.1/{path}",
    "{path}", "javascript:alert(1)", "data:image/png;base64,AAAA",
]  # fmt: skip
urls = st.builds(
    lambda shape, a, b, c, port, path: shape.format(a=a, b=b, c=c, port=port, path=path),
    st.sampled_from(URL_SHAPES),
    st.integers(0, 255), st.integers(0, 255), st.integers(1, 254),
    st.sampled_from(["", ":80", ":8500", ":1", ":65535"]),
    st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=20),
).map(safe_url)  # fmt: skip


def _image_bytes(fmt: str, size=(48, 36), seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, fmt)
    return out.getvalue()


FORMATS = ["JPEG", "PNG", "GIF", "WEBP", "BMP"]
SAMPLES = {fmt: _image_bytes(fmt) for fmt in FORMATS}
base64_images = st.sampled_from(list(SAMPLES.values())).map(lambda b: base64.b64encode(b).decode())
base64_junk = st.binary(max_size=300).map(lambda b: base64.b64encode(b).decode())
text_junk = st.text(max_size=40)


# -- properties -------------------------------------------------------------------------


@FUZZ
@given(body=json_values)
def test_random_json(gateway, body):
    status = check(post(gateway, json=body))
    if not isinstance(body, dict):
        assert status == 400


@FUZZ
@given(
    body=st.fixed_dictionaries(
        {},
        optional={
            "url": urls | json_values,
            "urls": st.lists(urls | json_values, max_size=35),
            "image": base64_images | base64_junk | text_junk | json_values,
            "images": st.lists(base64_images | base64_junk | text_junk, max_size=35),
            "other": json_values,
        },
    )
)
def test_json_with_the_known_keys(gateway, body):
    status = check(post(gateway, json=body))
    keys = [k for k in ("url", "urls", "image", "images") if k in body]
    if len(keys) != 1:
        assert status == 400
    if keys in (["url"], ["urls"]):
        assert status in (400, 422)  # never fetched: loopback and bad URLs are refused


@FUZZ
@given(data=st.binary(max_size=4096), channel=st.sampled_from(["upload", "raw", "base64"]))
def test_random_bytes_as_images(gateway, data, channel):
    if channel == "upload":
        response = post(gateway, files={"file": ("photo.jpg", data, "image/jpeg")})
    elif channel == "raw":
        response = post(gateway, data=data, headers={"Content-Type": "image/jpeg"})
    else:
        response = post(gateway, json={"image": base64.b64encode(data).decode()})
    status = check(response)
    assert status in ((415,) if data else (400,)), response.text


@settings(FUZZ, max_examples=100)
@given(
    fmt=st.sampled_from(FORMATS),
    cut=st.floats(0, 1),
    flips=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 7)), max_size=6),
)
def test_truncated_and_corrupted_images(gateway, fmt, cut, flips):
    data = bytearray(SAMPLES[fmt][: int(len(SAMPLES[fmt]) * cut)])
    for where, bit in flips:
        if data:
            data[min(int(where * len(data)), len(data) - 1)] ^= 1 << bit
    response = post(gateway, files={"file": (f"x.{fmt.lower()}", bytes(data))})
    # flipped header bytes may claim more pixels than the limit: a documented 413
    assert check(response) in ((200, 413, 415) if data else (400,))


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def claimed_size(fmt: str, w: int, h: int) -> bytes:
    """A file whose header says w x h, with (almost) no pixel data behind it."""
    if fmt == "PNG":
        ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
        return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b""))
                + _chunk(b"IEND", b""))  # fmt: skip
    if fmt == "JPEG":
        sof = struct.pack(">HBHHB", 17, 8, h, w, 3) + b"\x01\x11\x00\x02\x11\x00\x03\x11\x00"
        return b"\xff\xd8\xff\xc0" + sof
    if fmt == "GIF":
        screen = struct.pack("<HHBBB", w, h, 0, 0, 0)
        return (
            b"GIF89a" + screen + b"," + struct.pack("<HHHHB", 0, 0, w, h, 0) + b"\x02\x02D\x01\x00;"
        )
    if fmt == "BMP":
        dib = struct.pack("<IiiHHIIiiII", 40, w, h, 1, 24, 0, 0, 0, 0, 0, 0)
        return b"BM" + struct.pack("<IHHI", 14 + len(dib), 0, 0, 54) + dib
    vp8x = b"VP8X" + struct.pack("<I", 10) + b"\0\0\0\0" + (w - 1).to_bytes(3, "little")
    vp8x += (h - 1).to_bytes(3, "little")
    return b"RIFF" + struct.pack("<I", 4 + len(vp8x)) + b"WEBP" + vp8x


@FUZZ
@given(
    fmt=st.sampled_from(FORMATS),
    w=st.integers(1, 65535),
    h=st.integers(1, 65535),
    channel=st.sampled_from(["upload", "raw"]),
)
def test_headers_claiming_huge_dimensions(gateway, fmt, w, h, channel):
    data = claimed_size(fmt, w, h)
    if channel == "upload":
        response = post(gateway, files={"file": ("claims.img", data)})
    else:
        response = post(gateway, data=data, headers={"Content-Type": "application/octet-stream"})
    status = check(response)
    # (a GIF this small is complete: its few bytes of LZW data hold a pixel or more)
    assert status in ((200, 413, 415) if fmt == "GIF" else (413, 415)), response.text
    if w * h > MAX_IMAGE_PIXELS and fmt != "WEBP":  # libwebp will not open a header-only file
        assert status == 413, response.text


CONTENT_TYPES = [
    "text/plain", "application/xml", "application/x-www-form-urlencoded", "multipart/form-data",
    "multipart/form-data; boundary=xyz", "multipart/mixed; boundary=xyz", "application/json",
    "application/json; charset=latin-1", "image/png", "image/svg+xml", "application/pdf",
    "application/octet-stream", "", "*/*", "image", "json",
]  # fmt: skip
header_text = st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=30)


@FUZZ
@given(
    content_type=st.sampled_from(CONTENT_TYPES) | header_text,
    body=st.binary(max_size=2048) | json_values.map(lambda v: repr(v).encode()),
)
def test_wrong_content_types(gateway, content_type, body):
    response = post(gateway, data=body, headers={"Content-Type": content_type})
    check(response)


@settings(FUZZ, max_examples=12)
@given(
    extra=st.integers(1, 300_000),
    channel=st.sampled_from(["upload", "raw", "base64", "several uploads"]),
)
def test_oversized_bodies(gateway, extra, channel):
    data = b"\xff\xd8\xff\xe0" + b"\0" * (MAX_IMAGE_BYTES + extra)
    if channel == "upload":
        response = post(gateway, files={"file": ("big.jpg", data)})
    elif channel == "raw":
        response = post(gateway, data=data, headers={"Content-Type": "image/jpeg"})
    elif channel == "base64":
        response = post(gateway, json={"image": base64.b64encode(data).decode()})
    else:  # each small enough, together over MAX_REQUEST_BYTES
        part = b"\xff\xd8" + b"\0" * (MAX_IMAGE_BYTES // 2)
        count = MAX_REQUEST_BYTES // len(part) + 1
        response = post(gateway, files=[("file", (f"{i}.jpg", part)) for i in range(count)])
    assert check(response) == 413
    assert response.json()["error"]["code"] == "too_large"


def test_content_length_claiming_a_huge_body(gateway):
    """A request that announces 100 GB and sends 10 bytes is refused from the header."""
    host, port = gateway.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(
            b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
            b"Content-Length: 100000000000\r\nConnection: close\r\n\r\n0123456789"
        )
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), answer[:300]
    assert b'"too_large"' in body


def test_openapi_spec_with_schemathesis(gateway, tmp_path):
    """schemathesis generates requests from docu/openapi.yaml (positive and negative) and checks
    that the running gateway never errs, answers only documented codes, and matches the
    documented schemas."""
    env = dict(os.environ, SCHEMATHESIS_HOOKS="support.fuzz_safety",
               PYTHONPATH=os.pathsep.join([str(REPO / "tests"), os.environ.get("PYTHONPATH", "")]))  # fmt: skip
    cli = Path(sys.executable).with_name("schemathesis")
    command = [str(cli) if cli.exists() else "schemathesis", "run", str(SPEC_PATH),
               "--url", gateway, "--max-examples", "25", "--generation-database", "none",
               "--checks", "not_a_server_error,status_code_conformance,"
               "response_schema_conformance,content_type_conformance",
               "--phases", "examples,coverage,fuzzing", "--request-timeout", "60",
               "--no-color", "--report", "junit", "--report-dir", str(tmp_path)]  # fmt: skip
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=240)  # fmt: skip
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert "passed" in done.stdout and "generated" in done.stdout, done.stdout[-2000:]
