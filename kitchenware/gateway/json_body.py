"""Read a JSON /predict body as a stream, in memory bounded by the body's size.

`json.loads` turns a body into Python objects before anything can be checked:
45 MiB of `["ab", "ab", ...]` becomes ~600 MB of strings, and a 16 MiB base64
string full of spaces became 429 MB once split on whitespace. Here the body is
fed to a streaming parser (ijson) 64 KiB at a time and checked event by event
against the four documented shapes, so the first thing outside them stops the
read: a fifth nested level, a 33rd image, a number where a string belongs, or
one value longer than the largest image allows. Each base64 string is decoded
as soon as it is complete, window by window, without copying the text.
"""

from __future__ import annotations

import binascii
import re
from dataclasses import dataclass
from typing import BinaryIO

import ijson

from kitchenware.gateway.errors import BadRequest, TooLarge

JSON_KEYS = ("url", "urls", "image", "images")
CHUNK_BYTES = 64 * 1024
MAX_URL_BYTES = 16 * 1024  # a URL's JSON text, escapes included
DATA_URL_HEADER_CHARS = 256  # "data:image/jpeg;base64," and any parameters
STRUCTURE_BYTES = 4 * 1024  # braces, keys, commas and whitespace between values
DECODE_WINDOW_CHARS = 1024 * 1024  # multiple of 4
WHITESPACE = " \t\r\n"
_DROP_WHITESPACE = str.maketrans("", "", WHITESPACE)
_BASE64_TEXT = re.compile(r"[A-Za-z0-9+/= \t\r\n]*")
_PADDING_TAIL = re.compile(r"=[= \t\r\n]*")


@dataclass(frozen=True)
class JsonLimits:
    """How large a JSON request may be, derived from the image limits."""

    max_batch: int
    max_image_bytes: int

    @property
    def max_base64_chars(self) -> int:
        """One image as base64: 4 characters per 3 bytes, line breaks (up to one in 16
        characters) and a data: URL header."""
        encoded = 4 * -(-self.max_image_bytes // 3)
        return encoded + encoded // 16 + DATA_URL_HEADER_CHARS

    @property
    def max_string_bytes(self) -> int:
        """One base64 string's JSON text: an escaped line break takes 2 bytes, `\\/` too."""
        return self.max_base64_chars + self.max_base64_chars // 8

    @property
    def max_body_bytes(self) -> int:
        """A batch of the largest images, and a little structure."""
        return self.max_batch * (self.max_string_bytes + 8) + STRUCTURE_BYTES


@dataclass
class JsonRequest:
    key: str  # which of JSON_KEYS the body used
    values: list  # bytes for image/images, stripped URL strings for url/urls

    @property
    def batch(self) -> bool:
        return self.key in ("urls", "images")


def read_json_request(
    stream: BinaryIO, content_length: int | None, limits: JsonLimits
) -> JsonRequest:
    """Parse `stream` (a JSON body) into one of the documented shapes, or raise."""
    limit = limits.max_body_bytes
    if content_length is not None and content_length > limit:
        raise TooLarge(_body_limit_message(content_length, limits))
    shape = _Shape(limits)
    events = ijson.sendable_list()
    parser = ijson.basic_parse_coro(events)
    received = pending = 0  # bytes in all; bytes since the parser last completed a value
    try:
        while chunk := stream.read(CHUNK_BYTES):
            received += len(chunk)
            if received > limit:
                raise TooLarge(_body_limit_message(received, limits, at_least=True))
            parser.send(chunk)  # after the object, anything but whitespace raises here
            if shape.done:
                continue
            pending = 0 if events else pending + len(chunk)
            shape.feed(events)
            if not shape.done and pending > shape.max_pending_bytes():
                raise TooLarge(
                    f"{shape.where()} is longer than the limit of "
                    f"{shape.max_pending_bytes():,} bytes of JSON text"
                )
        parser.close()  # the end of the body: raises if the JSON is incomplete
        shape.feed(events)
    except ijson.JSONError as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BadRequest(f"the body is not valid JSON: {first_line}") from None
    except UnicodeDecodeError:
        raise BadRequest("the body is not valid JSON: it is not UTF-8") from None
    return shape.result()


def _body_limit_message(size: int, limits: JsonLimits, at_least: bool = False) -> str:
    shown = f"more than {size - 1:,}" if at_least else f"{size:,}"
    return (
        f"the JSON body is {shown} bytes; the limit is {limits.max_body_bytes:,} "
        f"({limits.max_batch} images of up to {limits.max_image_bytes:,} bytes as base64)"
    )


class _Shape:
    """A state machine over ijson's basic events that accepts only the documented shapes:
    {"url": s}, {"image": s}, {"urls": [s, ...]}, {"images": [s, ...]}."""

    def __init__(self, limits: JsonLimits) -> None:
        self.limits = limits
        self.state = "start"  # start -> key -> value -> (item ...) -> after -> done
        self.key: str | None = None
        self.values: list = []
        self.done = False

    def feed(self, events: list) -> None:
        for event, value in events:
            self._step(event, value)
        del events[:]

    def where(self) -> str:
        if self.state not in ("value", "item"):
            return "a key (or the space between values)"
        if self.state == "item":
            return f"'{self.key}[{len(self.values)}]'"
        return f"'{self.key}'"

    def max_pending_bytes(self) -> int:
        """How much JSON text may arrive before the parser completes the current token:
        a key, a URL or the space between values is short; an image is not."""
        if self.state in ("value", "item") and self.key in ("image", "images"):
            return self.limits.max_string_bytes + CHUNK_BYTES
        return MAX_URL_BYTES + CHUNK_BYTES

    def _step(self, event: str, value) -> None:
        if self.state == "start":
            if event != "start_map":
                raise BadRequest(f"expected a JSON object with one of {', '.join(JSON_KEYS)}")
            self.state = "key"
        elif self.state in ("key", "after"):
            if event == "end_map":
                if self.key is None:
                    raise BadRequest(_one_key_message("none"))
                self.state, self.done = "done", True
            else:  # the parser emits only keys and end_map here
                self._key(value)
        elif self.state == "value":
            self._value(event, value)
        elif self.state == "item":
            if event == "end_array":
                self.state = "after"
            else:
                self._item(event, value, f"{self.key}[{len(self.values)}]")

    def _key(self, key: str) -> None:
        if key in JSON_KEYS and self.key is not None:
            raise BadRequest(_one_key_message(f"{self.key}, {key}"))
        if key not in JSON_KEYS:
            raise BadRequest(f"unknown key '{key[:64]}': " + _one_key_message(self.key or "none"))
        self.key, self.state = key, "value"

    def _value(self, event: str, value) -> None:
        if self.key in ("urls", "images"):
            if event != "start_array":
                raise BadRequest(f"'{self.key}' must be a list")
            self.state = "item"
        else:
            self._item(event, value, self.key)
            self.state = "after"

    def _item(self, event: str, value, where: str) -> None:
        if event != "string" or not value.strip():
            raise BadRequest(f"'{where}' must be a non-empty string")
        if len(self.values) == self.limits.max_batch:
            raise BadRequest(
                f"more than {self.limits.max_batch} images in one request; "
                f"the limit is {self.limits.max_batch}"
            )
        if self.key in ("url", "urls"):
            self.values.append(value.strip())
        else:
            self.values.append(decode_base64(value, where, self.limits.max_image_bytes))

    def result(self) -> JsonRequest:
        return JsonRequest(self.key, self.values)  # complete: the parser raised otherwise


def _one_key_message(found: str) -> str:
    return f"expected exactly one of the keys {', '.join(JSON_KEYS)} (found: {found})"


def decode_base64(text: str, where: str, max_bytes: int) -> bytes:
    """The bytes `text` encodes (standard alphabet, padded; line breaks and a data: URL
    header allowed). The size is checked before anything is decoded, and the text is
    decoded a window at a time, never copied whole."""
    start = 0
    if text.startswith("data:"):
        comma = text.find(",", 0, DATA_URL_HEADER_CHARS)
        if comma < 0 or not text[:comma].endswith(";base64"):
            raise BadRequest(f"'{where}' is a data: URL without base64 encoding")
        start = comma + 1
    if not _BASE64_TEXT.fullmatch(text, start):
        raise BadRequest(
            f"'{where}' is not valid base64: it has characters outside A-Z a-z 0-9 + /"
        )
    spaces = sum(text.count(c, start) for c in WHITESPACE)
    chars = len(text) - start - spaces
    padding = text.count("=", start)
    first_pad = text.find("=", start)
    if (
        chars % 4
        or padding > 2
        or (first_pad >= 0 and not _PADDING_TAIL.fullmatch(text, first_pad))
    ):
        raise BadRequest(f"'{where}' is not valid base64: incorrect padding")
    if chars == 0:
        raise BadRequest(f"'{where}' holds no base64 data")
    size = chars // 4 * 3 - padding
    if size > max_bytes:
        raise TooLarge(f"'{where}' is larger than the limit of {max_bytes:,} bytes")
    decoded = []
    carry = ""
    for offset in range(start, len(text), DECODE_WINDOW_CHARS):
        window = carry + text[offset : offset + DECODE_WINDOW_CHARS].translate(_DROP_WHITESPACE)
        whole = len(window) - len(window) % 4
        carry = window[whole:]
        try:
            decoded.append(binascii.a2b_base64(window[:whole], strict_mode=True))
        except binascii.Error as exc:
            raise BadRequest(f"'{where}' is not valid base64: {exc}") from None
    return b"".join(decoded)
