"""HTTP gateway in front of TF Serving: `kitchenware gateway` runs Flask's development server.

Production runs the same app under gunicorn: `gunicorn -c gunicorn.conf.py gateway:app`.
Configuration comes from environment variables (see `kitchenware.gateway.config`).
Importing this package is cheap and never imports TensorFlow.
"""

from __future__ import annotations

from kitchenware.core.contract import GATEWAY_PORT


def create_app(settings=None, model_client=None):
    """The gateway's Flask app (see `kitchenware.gateway.app.create_app`)."""
    from kitchenware.gateway.app import create_app as _create_app

    return _create_app(settings, model_client)


def add_arguments(parser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=GATEWAY_PORT, help="HTTP port")
    parser.add_argument(
        "--debug", action="store_true", help="Flask debug mode (reloader, tracebacks)"
    )


def run(args) -> int:
    from kitchenware.gateway.config import Settings

    settings = Settings.from_env()
    app = create_app(settings)
    print(
        f"gateway on http://{args.host}:{args.port}/ -> model {settings.model_name!r} "
        f"at {settings.tf_serving_host} (development server; use gunicorn in production)"
    )
    app.run(host=args.host, port=args.port, debug=args.debug, threaded=True)
    return 0
