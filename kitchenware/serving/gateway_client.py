"""Send photos (local files) or image URLs to a running gateway and print what it sees.

`python test.py photo.jpg https://example.com/cup.jpg --gateway http://localhost:9696`
prints the label, its probability and the top classes for each input. The exit
status is 1 when any input failed, with the gateway's own error message.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

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


def add_arguments(parser) -> None:
    parser.add_argument(
        "inputs", nargs="*", metavar="URL_OR_PATH", help="image files or http(s) URLs"
    )
    add_fields(parser, ClassifyConfig)


def is_url(text: str) -> bool:
    return text.lower().startswith(("http://", "https://"))


def classify_one(session, gateway: str, source: str, timeout: float) -> dict:
    """The gateway's answer for one file or URL; raises KitchenwareError with its message."""
    import requests

    endpoint = gateway.rstrip("/") + "/predict"
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
            try:
                answer = classify_one(session, c.gateway, source, c.timeout)
            except KitchenwareError as exc:
                print(f"error: {exc}", file=sys.stderr)
                failures += 1
                continue
            print(format_answer(source, answer, c.top))
    return 1 if failures else 0
