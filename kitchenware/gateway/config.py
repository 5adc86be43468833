"""Gateway settings, read once from the environment (the twelve-factor way services are configured).

Every variable name is a constant here so deployment files, docs and tests can
refer to one spelling. A bad value stops the gateway at start-up with a message
naming the variable, instead of failing on the first request.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from kitchenware.core import contract, settings
from kitchenware.core.config import option
from kitchenware.core.settings import SettingsError

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
# gunicorn.conf.py's own variables (the process model, not the app).
PORT = "PORT"
GUNICORN_BIND = "GUNICORN_BIND"
GUNICORN_WORKERS = "GUNICORN_WORKERS"
GUNICORN_THREADS = "GUNICORN_THREADS"
GUNICORN_TIMEOUT = "GUNICORN_TIMEOUT"
GUNICORN_GRACEFUL_TIMEOUT = "GUNICORN_GRACEFUL_TIMEOUT"
GUNICORN_LOG_LEVEL = "GUNICORN_LOG_LEVEL"
FORWARDED_ALLOW_IPS = "FORWARDED_ALLOW_IPS"  # gunicorn's own variable name

ConfigError = SettingsError  # the name this module has always raised


@dataclass(frozen=True)
class Settings:
    """Everything the gateway can be configured with; defaults suit a laptop."""

    tf_serving_host: str = option(
        f"localhost:{contract.GRPC_PORT}", env=TF_SERVING_HOST, nonblank=True
    )
    model_name: str = option(contract.MODEL_NAME, env=MODEL_NAME, nonblank=True)
    grpc_timeout: float = option(10.0, env=GRPC_TIMEOUT, gt=0)
    grpc_max_message_bytes: int = option(
        contract.MAX_MESSAGE_BYTES, env=GRPC_MAX_MESSAGE_BYTES, gt=0
    )
    max_image_bytes: int = option(10 * 1024 * 1024, env=MAX_IMAGE_BYTES, gt=0)
    max_image_pixels: int = option(40_000_000, env=MAX_IMAGE_PIXELS, gt=0)
    # Per worker, shared by its threads, for request bodies, URL downloads and decodes:
    # 2 workers x (160 MiB + ~70 MiB baseline) stay inside the manifests' 512 MiB.
    max_decode_bytes: int = option(160 * 2**20, env=MAX_DECODE_BYTES, gt=0)
    # The whole HTTP body (a batch of uploads, base64 inflates by 4/3).
    max_request_bytes: int = option(50 * 1024 * 1024, env=MAX_REQUEST_BYTES, gt=0)
    max_batch: int = option(32, env=MAX_BATCH, gt=0)
    url_fetch_timeout: float = option(5.0, env=URL_FETCH_TIMEOUT, gt=0)
    allow_private_urls: bool = option(False, env=ALLOW_PRIVATE_URLS)

    def __post_init__(self) -> None:
        settings.check_fields(self)
        if self.max_decode_bytes < self.max_image_bytes:
            raise SettingsError(
                settings.refusal(
                    MAX_DECODE_BYTES,
                    self.max_decode_bytes,
                    f"a worker must be able to hold one image of MAX_IMAGE_BYTES "
                    f"({self.max_image_bytes:,} bytes) while it downloads or decodes it",
                )
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Settings from `environ` (default os.environ); unset or empty variables keep defaults."""
        return settings.from_env(cls, environ)


@dataclass(frozen=True)
class ServerSettings:
    """gunicorn's process model for the gateway (read by gunicorn.conf.py)."""

    port: int = option(contract.GATEWAY_PORT, env=PORT, ge=1, le=65535)
    # host:port (or unix:PATH) to listen on; overrides PORT.
    bind: str | None = option(None, env=GUNICORN_BIND)
    workers: int = option(2, env=GUNICORN_WORKERS, gt=0)
    threads: int = option(4, env=GUNICORN_THREADS, gt=0)
    # A request is bounded by URL_FETCH_TIMEOUT + GRPC_TIMEOUT; this only catches stuck workers.
    timeout: int = option(60, env=GUNICORN_TIMEOUT, gt=0)
    graceful_timeout: int = option(20, env=GUNICORN_GRACEFUL_TIMEOUT, gt=0)
    log_level: str = option(
        "info", env=GUNICORN_LOG_LEVEL, choices=("debug", "info", "warning", "error", "critical")
    )
    # Addresses whose X-Forwarded-* headers gunicorn believes: the proxy beside it.
    forwarded_allow_ips: str = option("127.0.0.1,::1", env=FORWARDED_ALLOW_IPS, nonblank=True)

    def __post_init__(self) -> None:
        settings.check_fields(self)

    @property
    def address(self) -> str:
        return self.bind or f"0.0.0.0:{self.port}"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ServerSettings:
        return settings.from_env(cls, environ)
