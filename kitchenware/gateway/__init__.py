"""HTTP gateway in front of TF Serving: `kitchenware gateway` runs Flask's development server.

Production runs the same app under gunicorn: `gunicorn -c gunicorn.conf.py gateway:app`.
Configuration comes from environment variables (see `kitchenware.gateway.config`).
Importing this package is cheap and never imports TensorFlow.
"""

from __future__ import annotations

from dataclasses import dataclass

from kitchenware.core.config import add_fields, from_args, option
from kitchenware.core.contract import GATEWAY_PORT


@dataclass(frozen=True)
class DevServerConfig:
    """`kitchenware gateway` options; the app's own settings come from the environment."""

    host: str = option("127.0.0.1", help="address to listen on")
    port: int = option(GATEWAY_PORT, ge=1, le=65535, help="HTTP port")
    debug: bool = option(False, help="Flask debug mode (reloader, tracebacks)")


def create_app(settings=None, model_client=None):
    """The gateway's Flask app (see `kitchenware.gateway.app.create_app`)."""
    from kitchenware.gateway.app import create_app as _create_app

    return _create_app(settings, model_client)


def add_arguments(parser) -> None:
    add_fields(parser, DevServerConfig)


def run(args) -> int:
    from kitchenware.gateway.config import Settings

    c = from_args(DevServerConfig, args)
    settings = Settings.from_env()
    app = create_app(settings)
    print(
        f"gateway on http://{c.host}:{c.port}/ -> model {settings.model_name!r} "
        f"at {settings.tf_serving_host} (development server; use gunicorn in production)"
    )
    app.run(host=c.host, port=c.port, debug=c.debug, threaded=True)
    return 0
