"""Gateway settings, read once from the environment (the twelve-factor way services are configured).

Every variable name is a constant here so deployment files, docs and tests can
refer to one spelling. A bad value stops the gateway at start-up with a message
naming the variable, instead of failing on the first request.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields

from kitchenware.core import contract
from kitchenware.core.errors import KitchenwareError

TF_SERVING_HOST = "TF_SERVING_HOST"
MODEL_NAME = "MODEL_NAME"
GRPC_TIMEOUT = "GRPC_TIMEOUT"
GRPC_MAX_MESSAGE_BYTES = "GRPC_MAX_MESSAGE_BYTES"
MAX_IMAGE_BYTES = "MAX_IMAGE_BYTES"
MAX_IMAGE_PIXELS = "MAX_IMAGE_PIXELS"
MAX_DECODE_BYTES = "MAX_DECODE_BYTES"
MAX_REQUEST_BYTES = "MAX_REQUEST_BYTES"
MAX_BATCH = "MAX_BATCH"
URL_FETCH_TIMEOUT = "URL_FETCH_TIMEOUT"
ALLOW_PRIVATE_URLS = "ALLOW_PRIVATE_URLS"

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class ConfigError(KitchenwareError):
    """An environment variable holds a value the gateway cannot use."""


@dataclass(frozen=True)
class Settings:
    """Everything the gateway can be configured with; defaults suit a laptop."""

    tf_serving_host: str = f"localhost:{contract.GRPC_PORT}"
    model_name: str = contract.MODEL_NAME
    grpc_timeout: float = 10.0
    grpc_max_message_bytes: int = contract.MAX_MESSAGE_BYTES
    max_image_bytes: int = 10 * 1024 * 1024
    max_image_pixels: int = 40_000_000
    # Per worker, shared by its threads: 2 workers x (160 MiB + ~70 MiB baseline)
    # stay inside the 512 MiB the manifests give the gateway container.
    max_decode_bytes: int = 160 * 2**20
    # The whole HTTP body (a batch of uploads, base64 inflates by 4/3).
    max_request_bytes: int = 50 * 1024 * 1024
    max_batch: int = 32
    url_fetch_timeout: float = 5.0
    allow_private_urls: bool = False

    def __post_init__(self) -> None:
        positive = {
            GRPC_TIMEOUT: self.grpc_timeout,
            GRPC_MAX_MESSAGE_BYTES: self.grpc_max_message_bytes,
            MAX_IMAGE_BYTES: self.max_image_bytes,
            MAX_IMAGE_PIXELS: self.max_image_pixels,
            MAX_DECODE_BYTES: self.max_decode_bytes,
            MAX_REQUEST_BYTES: self.max_request_bytes,
            MAX_BATCH: self.max_batch,
            URL_FETCH_TIMEOUT: self.url_fetch_timeout,
        }
        for name, value in positive.items():
            if not value > 0:
                raise ConfigError(f"{name} must be greater than 0, got {value!r}")
        if not self.tf_serving_host.strip():
            raise ConfigError(f"{TF_SERVING_HOST} must not be empty")
        if not self.model_name.strip():
            raise ConfigError(f"{MODEL_NAME} must not be empty")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Settings from `environ` (default os.environ); unset or empty variables keep defaults."""
        env = os.environ if environ is None else environ
        defaults = {f.name: f.default for f in fields(cls)}

        def get(name: str, field: str, parse):
            raw = env.get(name, "").strip()
            if raw == "":
                return defaults[field]
            try:
                return parse(raw)
            except ValueError as exc:
                raise ConfigError(f"{name}={raw!r} is not valid: {exc}") from None

        return cls(
            tf_serving_host=get(TF_SERVING_HOST, "tf_serving_host", str),
            model_name=get(MODEL_NAME, "model_name", str),
            grpc_timeout=get(GRPC_TIMEOUT, "grpc_timeout", _seconds),
            grpc_max_message_bytes=get(GRPC_MAX_MESSAGE_BYTES, "grpc_max_message_bytes", _count),
            max_image_bytes=get(MAX_IMAGE_BYTES, "max_image_bytes", _count),
            max_image_pixels=get(MAX_IMAGE_PIXELS, "max_image_pixels", _count),
            max_decode_bytes=get(MAX_DECODE_BYTES, "max_decode_bytes", _count),
            max_request_bytes=get(MAX_REQUEST_BYTES, "max_request_bytes", _count),
            max_batch=get(MAX_BATCH, "max_batch", _count),
            url_fetch_timeout=get(URL_FETCH_TIMEOUT, "url_fetch_timeout", _seconds),
            allow_private_urls=get(ALLOW_PRIVATE_URLS, "allow_private_urls", _flag),
        )


def _seconds(raw: str) -> float:
    value = float(raw)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError("expected a finite number of seconds")
    return value


def _count(raw: str) -> int:
    try:
        return int(raw.replace("_", ""))
    except ValueError:
        raise ValueError("expected a whole number") from None


def _flag(raw: str) -> bool:
    value = raw.lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError("expected true or false")
