"""Send photos (local files) or image URLs to a running gateway and print what it sees.

`python test.py photo.jpg https://example.com/cup.jpg --gateway http://localhost:9696`
prints the label, its probability and the top classes for each input. The exit
status is 1 when any input failed, with the gateway's own error message.

With `--explain` each input goes to the gateway's /explain instead, and the
Grad-CAM overlay it answers is saved as a PNG next to the photo
(`photo.jpg` -> `photo.explain.png`; for a URL, in the current folder).
"""

from __future__ import annotations

import base64
import binascii
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

from kitchenware.core.config import add_fields, from_args, option
from kitchenware.core.contract import GATEWAY_PORT
from kitchenware.core.errors import KitchenwareError

DEFAULT_GATEWAY = f"http://localhost:{GATEWAY_PORT}"


@dataclass(frozen=True)
class ClassifyConfig:
    """`kitchenware classify` / `python test.py` options (the inputs, positional, by hand)."""

    gateway: str = option(DEFAULT_GATEWAY, help="gateway base URL")
    top: int = option(3, ge=1, help="how many classes to list")
    timeout: float = option(60.0, gt=0, help="seconds to wait per request")
    explain: bool = option(
        False,
        help="ask /explain and save the Grad-CAM overlay next to each photo (NAME.explain.png)",
    )


def add_arguments(parser) -> None:
    parser.add_argument(
        "inputs", nargs="*", metavar="URL_OR_PATH", help="image files or http(s) URLs"
    )
    add_fields(parser, ClassifyConfig)


OVERLAY_SUFFIX = ".explain.png"


def is_url(text: str) -> bool:
    return text.lower().startswith(("http://", "https://"))


def classify_one(
    session, gateway: str, source: str, timeout: float, endpoint: str = "/predict"
) -> dict:
    """The gateway's answer for one file or URL; raises KitchenwareError with its message."""
    import requests

    endpoint = gateway.rstrip("/") + endpoint
    try:
        if is_url(source):
            response = session.post(endpoint, json={"url": source}, timeout=timeout)
        else:
            path = Path(source)
            if not path.is_file():
                raise KitchenwareError(f"{source}: not an http(s) URL and no such file")
            with path.open("rb") as fh:
                files = {"file": (path.name, fh, "application/octet-stream")}
                response = session.post(endpoint, files=files, timeout=timeout)
    except requests.ConnectionError:
        raise KitchenwareError(f"cannot connect to the gateway at {gateway}") from None
    except requests.Timeout:
        raise KitchenwareError(
            f"the gateway at {gateway} did not answer in {timeout:g} s"
        ) from None
    try:
        answer = response.json()
    except ValueError:
        answer = None
    if response.status_code != 200:
        error = (answer or {}).get("error", {}) if isinstance(answer, dict) else {}
        message = error.get("message") or response.text[:200] or response.reason
        raise KitchenwareError(f"{source}: HTTP {response.status_code}: {message}")
    if not isinstance(answer, dict) or "probabilities" not in answer:
        raise KitchenwareError(
            f"{source}: unexpected answer from the gateway: {response.text[:200]}"
        )
    return answer


def format_answer(source: str, answer: dict, top: int) -> str:
    ranked = sorted(answer["probabilities"].items(), key=lambda kv: kv[1], reverse=True)[:top]
    model = answer.get("model", {})
    lines = [
        f"{source}: {answer['label']} ({answer['probability']:.1%})"
        f"  [model {model.get('name', '?')} v{model.get('version', '?')}]"
    ]
    lines += [f"    {name:<8} {p:7.2%}  {'#' * round(p * 30)}" for name, p in ranked]
    return "\n".join(lines)


def overlay_path(source: str) -> Path:
    """Where `--explain` saves the overlay of `source`: beside a file, in the current folder
    for a URL (named after the URL's last path part)."""
    if not is_url(source):
        path = Path(source)
        return path.with_name(path.stem + OVERLAY_SUFFIX)
    last = unquote(source.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1])
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", Path(last).stem) or "image"
    return Path(stem + OVERLAY_SUFFIX)


def save_overlay(source: str, answer: dict) -> Path:
    """Write the overlay PNG of an /explain answer; raises KitchenwareError if there is none."""
    try:
        png = base64.b64decode(answer["explanation"]["overlay_png"], validate=True)
    except (KeyError, TypeError, binascii.Error, ValueError):
        raise KitchenwareError(f"{source}: the gateway's answer holds no overlay PNG") from None
    path = overlay_path(source)
    try:
        path.write_bytes(png)
    except OSError as exc:
        raise KitchenwareError(f"{source}: cannot write the overlay to {path}: {exc}") from None
    return path


def run(args) -> int:
    import requests

    if not args.inputs:
        raise KitchenwareError(
            "give one or more image files or http(s) URLs, e.g. "
            "`python test.py photo.jpg --gateway http://localhost:9696`"
        )
    c = from_args(ClassifyConfig, args)
    failures = 0
    with requests.Session() as session:
        for source in args.inputs:
            endpoint = "/explain" if c.explain else "/predict"
            try:
                answer = classify_one(session, c.gateway, source, c.timeout, endpoint)
                saved = save_overlay(source, answer) if c.explain else None
            except KitchenwareError as exc:
                print(f"error: {exc}", file=sys.stderr)
                failures += 1
                continue
            print(format_answer(source, answer, c.top))
            if saved is not None:
                print(f"    why: Grad-CAM overlay saved to {saved}")
    return 1 if failures else 0
