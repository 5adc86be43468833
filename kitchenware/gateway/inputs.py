"""Turn a POST /predict request into a list of images to classify.

Accepted forms (one image answers one prediction, a list answers a batch):

- JSON `{"url": "..."}` (what existing clients and `test.py` send) or `{"urls": [...]}`
- JSON `{"image": "<base64>"}` or `{"images": [...]}` (a `data:` URL prefix is fine)
- multipart/form-data with one or more `file` fields
- a raw body with an `image/*` or `application/octet-stream` content type
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from flask import Request

from kitchenware.gateway.errors import BadRequest, TooLarge

JSON_KEYS = ("url", "urls", "image", "images")
FILE_FIELD = "file"


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


def parse_predict_request(request: Request, max_batch: int, max_image_bytes: int) -> ParsedRequest:
    content_type = request.mimetype or ""
    if request.is_json:
        parsed = _from_json(request, max_image_bytes)
    elif content_type == "multipart/form-data":
        parsed = _from_multipart(request, max_image_bytes)
    elif content_type.startswith("image/") or content_type == "application/octet-stream":
        data = request.get_data(cache=False)
        _check_size(len(data), "the request body", max_image_bytes)
        if not data:
            raise BadRequest("the request body is empty")
        parsed = ParsedRequest([ImageInput("the request body", data=data)], batch=False)
    else:
        shown = content_type or "no Content-Type"
        raise BadRequest(
            f'unsupported request ({shown}): send JSON {{"url": ...}} or {{"image": base64}}, '
            f"multipart/form-data with a '{FILE_FIELD}' field, or an image body"
        )
    if not parsed.items:
        raise BadRequest("the request contains no image")
    if len(parsed.items) > max_batch:
        raise BadRequest(f"{len(parsed.items)} images in one request; the limit is {max_batch}")
    return parsed


def _from_json(request: Request, max_image_bytes: int) -> ParsedRequest:
    try:
        body = request.get_json(silent=True)
    except RecursionError:  # `silent` covers ValueError only; "[[[[..." exhausts the stack
        raise BadRequest("the JSON body is nested too deeply") from None
    if body is None:
        raise BadRequest("the body is not valid JSON")
    if not isinstance(body, dict):
        raise BadRequest(f"expected a JSON object with one of {', '.join(JSON_KEYS)}")
    present = [key for key in JSON_KEYS if key in body]
    if len(present) != 1:
        found = ", ".join(present) if present else "none"
        raise BadRequest(
            f"expected exactly one of the keys {', '.join(JSON_KEYS)} (found: {found})"
        )
    key = present[0]
    value = body[key]
    if key in ("url", "image"):
        values, batch = [value], False
    elif isinstance(value, list):
        values, batch = value, True
    else:
        raise BadRequest(f"'{key}' must be a list")
    items = []
    for index, item in enumerate(values):
        where = f"{key}[{index}]" if batch else key
        if not isinstance(item, str) or not item.strip():
            raise BadRequest(f"'{where}' must be a non-empty string")
        if key.startswith("url"):
            items.append(ImageInput(f"URL {item.strip()}", url=item.strip()))
        else:
            items.append(
                ImageInput(f"'{where}'", data=_decode_base64(item, where, max_image_bytes))
            )
    return ParsedRequest(items, batch)


def _decode_base64(text: str, where: str, max_image_bytes: int) -> bytes:
    if text.startswith("data:"):
        header, _, text = text.partition(",")
        if not header.endswith(";base64"):
            raise BadRequest(f"'{where}' is a data: URL without base64 encoding")
    text = "".join(text.split())
    # Check the size before decoding: base64 carries 3 bytes per 4 characters.
    _check_size(len(text) * 3 // 4 - text.count("="), f"'{where}'", max_image_bytes)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"'{where}' is not valid base64") from None


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
        name = upload.filename or f"{FILE_FIELD}[{index}]"
        data = upload.stream.read(max_image_bytes + 1)
        _check_size(len(data), f"upload {name}", max_image_bytes)
        if not data:
            raise BadRequest(f"upload {name} is empty")
        items.append(ImageInput(f"upload {name}", data=data))
    return ParsedRequest(items, batch=len(items) > 1)


def _check_size(size: int, what: str, limit: int) -> None:
    if size > limit:
        raise TooLarge(f"{what} is larger than the limit of {limit:,} bytes")
