"""JSON /predict bodies are read as a stream and stop at the first thing outside the
documented shapes, so their memory is bounded by their size (issue 21)."""

from __future__ import annotations

import base64
import io
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kitchenware.gateway.app import create_app
from kitchenware.gateway.config import Settings
from kitchenware.gateway.errors import BadRequest, TooLarge
from kitchenware.gateway.json_body import (
    CHUNK_BYTES,
    DECODE_WINDOW_CHARS,
    JsonLimits,
    decode_base64,
    read_json_request,
)

LIMITS = JsonLimits(max_batch=4, max_image_bytes=50_000)


class CountingStream(io.BytesIO):
    """A request body that tells how much of it the gateway read: where it stopped."""

    @property
    def read_bytes(self) -> int:
        return self.tell()


def read(body: bytes, limits: JsonLimits = LIMITS):
    return read_json_request(io.BytesIO(body), len(body), limits)


BIG = JsonLimits(max_batch=4, max_image_bytes=2_000_000)  # bodies up to ~12.7 MB


@pytest.fixture
def client():
    settings = Settings(tf_serving_host="127.0.0.1:1", max_image_bytes=BIG.max_image_bytes,
                        max_request_bytes=20_000_000, max_batch=BIG.max_batch)  # fmt: skip
    return create_app(settings).test_client()


@pytest.mark.parametrize(
    "body, values",
    [
        ({"url": " http://x/a.jpg "}, ["http://x/a.jpg"]),
        ({"urls": ["http://x/a.jpg", "http://x/b.jpg"]}, ["http://x/a.jpg", "http://x/b.jpg"]),
        ({"image": base64.b64encode(b"photo").decode()}, [b"photo"]),
        ({"images": ["cGhvdG8=", "data:image/jpeg;base64,cGhv\r\ndG8="]}, [b"photo", b"photo"]),
    ],
)
def test_the_documented_shapes_are_read(body, values):
    assert read(json.dumps(body).encode()).values == values


@pytest.mark.parametrize(
    "text, fragment",
    [
        ('{"link": "http://x"}', "unknown key 'link'"),
        ('{"url": "http://x", "note": "hi"}', "unknown key 'note'"),
        ('{"url": "http://x", "url": "http://y"}', "found: url, url"),
        ('{"images": [["cGhvdG8="]]}', "'images[0]' must be a non-empty string"),
        ('{"images": ["cGhvdG8=", {"a": 1}]}', "'images[1]' must be a non-empty string"),
        ('{"image": null}', "'image' must be a non-empty string"),
        ('{"images": "cGhvdG8="}', "'images' must be a list"),
        ('{"url": "http://x"} {"url": "http://y"}', "not valid JSON"),
        ('{"url": "http://x"', "not valid JSON"),
        ('{"url": "\xff"}', "not valid JSON"),
        ("", "not valid JSON"),
        ("{}", "found: none"),
        ('"cGhvdG8="', "expected a JSON object"),
    ],
)
def test_anything_outside_the_shapes_is_a_400(text, fragment):
    with pytest.raises(BadRequest) as error:
        read(text.encode("latin-1"))
    assert fragment in error.value.message


def test_a_list_longer_than_the_batch_stops_the_read_at_the_first_extra_item(client):
    """45 MiB of "ab" strings became ~600 MB of Python objects when parsed whole."""
    body = CountingStream(b'{"images": [' + b'"abcd", ' * 1_000_000 + b'"abcd"]}')  # 8 MB
    response = client.post("/predict", input_stream=body, content_type="application/json")
    assert response.status_code == 400
    assert response.get_json()["error"]["message"].startswith("more than 4 images")
    assert body.read_bytes <= CHUNK_BYTES


def test_a_value_longer_than_an_image_allows_stops_the_read_early(client):
    """A string is read whole before the parser hands it over: it must not get far."""
    size = 6_000_000
    body = CountingStream(b'{"image": "' + b"A" * size + b'"}')
    response = client.post("/predict", input_stream=body, content_type="application/json")
    assert response.status_code == 413
    assert "'image' is longer than the limit" in response.get_json()["error"]["message"]
    # The limit, the chunk the string began in and the chunk that crossed the limit.
    assert body.read_bytes <= BIG.max_string_bytes + 3 * CHUNK_BYTES


def test_a_body_over_the_batch_of_largest_images_is_refused_from_its_length(client):
    body = CountingStream(b" " * (BIG.max_body_bytes + 1))
    response = client.post("/predict", input_stream=body, content_type="application/json")
    assert response.status_code == 413 and body.read_bytes == 0
    assert "4 images of up to 2,000,000 bytes as base64" in response.get_json()["error"]["message"]


def test_urls_have_their_own_short_limit():
    with pytest.raises(TooLarge, match="'url' is longer"):
        read(b'{"url": "http://x/' + b"a" * 200_000 + b'"}')


@settings(max_examples=60, deadline=None)
@given(
    data=st.binary(min_size=1, max_size=3000),
    line=st.integers(min_value=1, max_value=120),
    newline=st.sampled_from(["\n", "\r\n", " ", "\t"]),
    header=st.sampled_from(["", "data:image/png;base64,", "data:;base64,"]),
)
def test_base64_with_line_breaks_and_headers_decodes_to_its_bytes(data, line, newline, header):
    encoded = base64.b64encode(data).decode()
    wrapped = newline.join(encoded[i : i + line] for i in range(0, len(encoded), line))
    assert decode_base64(header + wrapped, "image", 10_000) == data


def test_base64_across_decode_windows():
    data = bytes(range(256)) * (DECODE_WINDOW_CHARS // 256 + 7)
    encoded = base64.b64encode(data).decode()
    spaced = " ".join(encoded[i : i + 3] for i in range(0, len(encoded), 3))  # windows misalign
    assert decode_base64(spaced, "image", len(data)) == data


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("cGhvdG8", "incorrect padding"),
        ("cG==dG8=", "incorrect padding"),
        ("cGhvdG8===", "incorrect padding"),
        ("cGh-dG8_", "outside A-Z"),
        ("data:image/png,cGhvdG8=", "without base64 encoding"),
        ("data:image/png;base64,", "holds no base64 data"),
        (" \n ", "holds no base64 data"),
    ],
)
def test_malformed_base64_is_a_400(text, fragment):
    with pytest.raises(BadRequest, match=fragment):
        decode_base64(text, "image", 1000)


def test_base64_size_is_checked_before_decoding():
    with pytest.raises(TooLarge, match="larger than the limit of 3 bytes"):
        decode_base64("cGhvdG8=", "image", 3)
