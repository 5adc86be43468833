"""Turn a POST /predict request into a list of images to classify.

Accepted forms (one image answers one prediction, a list answers a batch):

- JSON `{"url": "..."}` (what existing clients and `test.py` send) or `{"urls": [...]}`
- JSON `{"image": "<base64>"}` or `{"images": [...]}` (a `data:` URL prefix is fine)
- multipart/form-data with one or more `file` fields
- a raw body with an `image/*` or `application/octet-stream` content type

`body_memory` says, before a byte of the body is read, the most that parsing it
can hold in memory, so the caller can reserve it in the worker's budget.
"""

from __future__ import annotations

from dataclasses import dataclass

from flask import Request

from kitchenware.gateway.errors import BadRequest, TooLarge
from kitchenware.gateway.json_body import CHUNK_BYTES, JsonLimits, read_json_request

FILE_FIELD = "file"
# werkzeug keeps a file part under 500 KiB in memory (a larger one goes to a temporary
# file), and we read every upload into memory: a form can hold up to twice its size.
MULTIPART_COPIES = 2


@dataclass(frozen=True)
class ImageInput:
    """One image to classify: its bytes, or a URL still to be fetched."""

    label: str  # how error messages refer to it
    data: bytes | None = None
    url: str | None = None


@dataclass(frozen=True)
class ParsedRequest:
    items: list[ImageInput]
    batch: bool  # answer {"predictions": [...]} instead of a single prediction

    @property
    def held_bytes(self) -> int:
        """The image bytes this request holds once parsed (URLs are not fetched yet)."""
        return sum(len(item.data) for item in self.items if item.data is not None)


@dataclass(frozen=True)
class RequestLimits:
    max_batch: int
    max_image_bytes: int
    max_request_bytes: int

    @property
    def json(self) -> JsonLimits:
        return JsonLimits(self.max_batch, self.max_image_bytes)


def body_memory(request: Request, limits: RequestLimits) -> int:
    """The most memory parsing `request`'s body can hold, from its declared size
    (a chunked body is taken at its largest allowed size)."""
    length = request.content_length
    largest = limits.max_request_bytes if length is None else min(length, limits.max_request_bytes)
    if request.is_json:
        # The decoded images, plus the parser's buffer and the string it builds for the
        # longest value (ijson's C backend), plus the chunk in flight.
        largest = min(largest, limits.json.max_body_bytes)
        string = min(largest, limits.json.max_string_bytes)
        return largest * 3 // 4 + 2 * string + 2 * CHUNK_BYTES
    if request.mimetype == "multipart/form-data":
        return MULTIPART_COPIES * largest
    return min(largest, limits.max_image_bytes + 1)


def parse_predict_request(request: Request, limits: RequestLimits) -> ParsedRequest:
    content_type = request.mimetype or ""
    if request.is_json:
        parsed = _from_json(request, limits)
    elif content_type == "multipart/form-data":
        parsed = _from_multipart(request, limits.max_image_bytes)
    elif content_type.startswith("image/") or content_type == "application/octet-stream":
        parsed = _from_raw_body(request, limits.max_image_bytes)
    else:
        shown = content_type or "no Content-Type"
        raise BadRequest(
            f'unsupported request ({shown}): send JSON {{"url": ...}} or {{"image": base64}}, '
            f"multipart/form-data with a '{FILE_FIELD}' field, or an image body"
        )
    if not parsed.items:
        raise BadRequest("the request contains no image")
    if len(parsed.items) > limits.max_batch:
        raise BadRequest(
            f"{len(parsed.items)} images in one request; the limit is {limits.max_batch}"
        )
    return parsed


def _from_json(request: Request, limits: RequestLimits) -> ParsedRequest:
    body = read_json_request(request.stream, request.content_length, limits.json)
    if body.key.startswith("url"):
        items = [ImageInput(f"URL {url}", url=url) for url in body.values]
    else:
        items = [
            ImageInput(f"'{body.key}[{index}]'" if body.batch else f"'{body.key}'", data=data)
            for index, data in enumerate(body.values)
        ]
    return ParsedRequest(items, body.batch)


def _from_raw_body(request: Request, max_image_bytes: int) -> ParsedRequest:
    """The body itself, refused from its Content-Length before it is read when too large."""
    stream = request.stream  # werkzeug refuses a body over MAX_REQUEST_BYTES here (413)
    if request.content_length is not None:
        _check_size(request.content_length, "the request body", max_image_bytes)
    data = _read_at_most(stream, max_image_bytes + 1)
    _check_size(len(data), "the request body", max_image_bytes)
    if not data:
        raise BadRequest("the request body is empty")
    return ParsedRequest([ImageInput("the request body", data=data)], batch=False)


def _from_multipart(request: Request, max_image_bytes: int) -> ParsedRequest:
    uploads = request.files.getlist(FILE_FIELD)
    if not uploads:
        if FILE_FIELD in request.form:  # e.g. curl -F 'file=<photo.jpg' sends the bytes as text
            raise BadRequest(
                f"the form field '{FILE_FIELD}' is a text value, not a file upload: send the "
                f"photo as a file (curl -F '{FILE_FIELD}=@photo.jpg')"
            )
        others = ", ".join(sorted({*request.files, *request.form})) or "none"
        raise BadRequest(f"upload the photo in a form field named '{FILE_FIELD}' (found: {others})")
    items = []
    for index, upload in enumerate(uploads):
        # The client's file name only labels messages (shortened): it is never a path here.
        name = _shortened(upload.filename) or f"{FILE_FIELD}[{index}]"
        data = upload.stream.read(max_image_bytes + 1)
        _check_size(len(data), f"upload {name}", max_image_bytes)
        if not data:
            raise BadRequest(f"upload {name} is empty")
        items.append(ImageInput(f"upload {name}", data=data))
    return ParsedRequest(items, batch=len(items) > 1)


def _shortened(text: str | None, limit: int = 80) -> str:
    text = text or ""
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def _read_at_most(stream, limit: int) -> bytes:
    """Up to `limit` bytes, read until the body ends (one read may return less, and a
    body that ends before its Content-Length raises only on the read that finds it)."""
    data = bytearray()
    while len(data) < limit and (chunk := stream.read(min(CHUNK_BYTES, limit - len(data)))):
        data += chunk
    return bytes(data)


def _check_size(size: int, what: str, limit: int) -> None:
    if size > limit:
        raise TooLarge(f"{what} is larger than the limit of {limit:,} bytes")
