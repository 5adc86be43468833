"""TF-Serving-compatible gRPC model server (for machines without Docker, and for tests).

Production runs the official `tensorflow/serving` image; this server speaks the
same gRPC API with the official protos, so clients cannot tell them apart:
PredictionService.Predict and GetModelMetadata, ModelService.GetModelStatus,
the standard grpc.health.v1 service (SERVING only while a version is loaded),
TF Serving's status codes, file-system polling for new versions, dynamic
batching configured like TF Serving's, and a graceful stop on SIGTERM.
TF Serving's own flag spellings (--model_base_path, --enable_batching, ...) work too.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

from kitchenware.core.config import add_fields, from_args, option
from kitchenware.core.contract import GRPC_PORT, MAX_MESSAGE_BYTES, MODEL_NAME, REST_PORT
from kitchenware.core.errors import KitchenwareError
from kitchenware.model_server import rest as model_server_rest

# This module holds the flags and the start-up order; the servicers are in `services`,
# the stats file in `stats`. The logger keeps the name operators already filter on.
log = logging.getLogger("kitchenware.model_server")

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


@dataclass(kw_only=True)
class ModelServerConfig:
    """`kitchenware model-server` options; `env` names TF Serving's image variables.

    A new option is one field here (e.g. `backend: str = option("auto", env=...,
    choices=...)`); the flag, its help, the variable and its checks follow from it.
    """

    model_base_path: str | None = option(
        None,
        aliases=("--model_base_path",),
        help="folder holding numbered SavedModel versions "
        f"(default: $MODEL_BASE_PATH/MODEL_NAME, else models/{MODEL_NAME})",
    )
    models_root: str | None = option(
        None, env="MODEL_BASE_PATH", cli=False, help="parent of each model's folder"
    )
    model_name: str = option(
        MODEL_NAME,
        env="MODEL_NAME",
        aliases=("--model_name",),
        nonblank=True,
        help="name clients put in model_spec.name",
    )
    host: str = option("127.0.0.1", help="address to bind (0.0.0.0 in a container)")
    port: int = option(GRPC_PORT, ge=1, le=65535, help="gRPC port")
    rest_api_port: int = option(
        REST_PORT,
        env="REST_PORT",
        aliases=("--rest_api_port",),
        ge=0,
        le=65535,
        help="TF Serving's REST API (model status, :predict); 0 turns it off. "
        "A port already in use is logged as an error and gRPC keeps serving",
    )
    rest_max_body_bytes: int = option(MAX_MESSAGE_BYTES, gt=0, help="largest :predict request body")
    batching: bool = option(
        True,
        negatable=True,
        aliases=("--enable-batching", "--enable_batching"),
        help="batch concurrent requests on the server (--no-batching: every request alone)",
    )
    max_batch_size: int = option(32, ge=1, help="rows per batch at most")
    batch_timeout_ms: float = option(
        5.0, ge=0, help="how long the oldest queued request waits for others"
    )
    num_batch_threads: int = option(1, ge=1, help="batches run in parallel")
    batching_parameters_file: str | None = option(
        None,
        aliases=("--batching_parameters_file",),
        help="TF Serving's batching parameters (text format); overrides the flags",
    )
    poll_seconds: float = option(
        2.0,
        aliases=("--file_system_poll_wait_seconds",),
        ge=0,
        help="look for new versions this often (0: load once)",
    )
    max_num_load_retries: int = option(
        5,
        aliases=("--max_num_load_retries",),
        ge=0,
        help="before the first version serves: retry a failed load this often, then exit 1",
    )
    load_retry_interval_seconds: float = option(
        60.0, ge=0, help="wait between those retries (TF Serving's --load_retry_interval_micros)"
    )
    num_versions: int = option(
        1, ge=1, help="serve this many newest versions (TF Serving's latest{num_versions})"
    )
    warmup_iterations: int = option(
        1,
        ge=1,
        help="run each warm-up record this many times "
        "(TF Serving's ModelWarmupOptions.num_request_iterations)",
    )
    max_message_bytes: int = option(MAX_MESSAGE_BYTES, ge=1024, help="largest gRPC message in/out")
    grpc_threads: int = option(64, ge=1, help="concurrent RPCs at most")
    shutdown_grace_seconds: float = option(
        10.0, ge=0, help="on SIGTERM, wait this long for in-flight requests"
    )
    stats_file: str | None = option(
        None,
        help="keep a JSON file with served versions, load failures and batch counts up to date",
    )
    log_level: str = option("INFO", choices=LOG_LEVELS, help="least severe log record shown")
    check_config: bool = option(
        False, help="validate the flags and the batching file, print the settings, exit"
    )
    backend: str = option(
        "auto",
        env="MODEL_BACKEND",
        choices=("auto", "tensorflow", "openvino"),
        help="runtime: tensorflow (the SavedModel), openvino (the IR the export wrote; no "
        "TensorFlow imported), auto (OpenVINO when every signature has IR and its self-test "
        "passes, else TensorFlow)",
    )

    def __post_init__(self) -> None:
        if self.model_base_path is None:
            self.model_base_path = str(Path(self.models_root or "models") / self.model_name)


def add_arguments(parser) -> None:
    add_fields(parser, ModelServerConfig)


def config_from_args(args, environ=None) -> ModelServerConfig:
    """Typed flags, then MODEL_NAME / MODEL_BASE_PATH / REST_PORT, then the defaults."""
    return from_args(ModelServerConfig, args, environ=environ)


def batching_config(c: ModelServerConfig):
    """BatchingConfig from the flags, then the parameters file on top (as TF Serving reads it)."""
    from kitchenware.model_server.batching_config import BatchingConfig, load_batching_parameters

    base = BatchingConfig(
        max_batch_size=c.max_batch_size,
        batch_timeout_micros=int(round(c.batch_timeout_ms * 1000)),
        num_batch_threads=c.num_batch_threads,
    )
    if c.batching_parameters_file:
        return load_batching_parameters(c.batching_parameters_file, base)
    return base


def _listen(server, args) -> str:
    """Add the gRPC port; gRPC listens from this call on, so it comes after the first load."""
    address = f"{args.host}:{args.port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise KitchenwareError(f"cannot listen on {address}: {exc}") from None
    if not bound:
        raise KitchenwareError(f"cannot listen on {address}")
    return address


def run(args) -> int:
    args = config_from_args(args)
    config = batching_config(args)
    if args.check_config:
        print(
            json.dumps(
                {"batching": args.batching, "backend": args.backend, **config.__dict__},
                indent=2,
                default=list,
            )
        )
        return 0
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    import grpc
    from grpc_health.v1 import health_pb2_grpc
    from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

    from kitchenware.model_server.batcher import BatchStats
    from kitchenware.model_server.servables import VersionManager
    from kitchenware.model_server.services import ModelHealth, ModelService, PredictionService
    from kitchenware.model_server.stats import StatsWriter

    stats = BatchStats()
    health = ModelHealth(args.model_name)

    def on_versions_changed(manager: VersionManager) -> None:
        health.report(manager)
        stats.changed.set()  # the stats file reports served versions too

    manager = VersionManager(
        args.model_base_path,
        args.model_name,
        num_versions=args.num_versions,
        batching=config if args.batching else None,
        stats=stats,
        on_change=on_versions_changed,
        warmup_iterations=args.warmup_iterations,
        backend=args.backend,
    )

    def collect() -> dict:
        return {
            **manager.status(),
            "batching": {
                "enabled": args.batching,
                **({**config.__dict__} if args.batching else {}),
            },
            "stats": stats.as_dict(),
            "pid": os.getpid(),
        }

    writer = StatsWriter(args.stats_file, collect)
    options = [
        ("grpc.max_send_message_length", args.max_message_bytes),
        ("grpc.max_receive_message_length", args.max_message_bytes),
        ("grpc.so_reuseport", 0),
    ]
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=args.grpc_threads, thread_name_prefix="grpc"),
        options=options,
    )
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionService(manager, args.model_name, stats, args.max_message_bytes), server
    )
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(
        ModelService(manager, args.model_name), server
    )
    health_pb2_grpc.add_HealthServicer_to_server(health, server)

    stop = threading.Event()

    def on_signal(signum, _frame):
        log.info("received %s: shutting down", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    on_versions_changed(manager)
    if not Path(args.model_base_path).is_dir():
        log.warning("%s does not exist yet; polling for versions", args.model_base_path)
    writer.start(stats.changed)
    # No port opens before a version is AVAILABLE, as in TF Serving (server.cc starts the
    # gRPC and HTTP servers only after ServerCore::Create has waited for the models):
    # clients see a refused connection, not an answering server without a model.
    log.info("waiting for a version of %s under %s", args.model_name, args.model_base_path)
    if not manager.wait_first_version(
        args.poll_seconds, args.max_num_load_retries, args.load_retry_interval_seconds, stop
    ):
        manager.stop()
        writer.stop()
        if stop.is_set():
            log.info("stopped before a version was loaded")
            return 0
        log.error(
            "no version of %s could be loaded (%s); exiting",
            args.model_name,
            manager.not_loaded_reason(),
        )
        return 1
    try:
        address = _listen(server, args)
    except KitchenwareError:
        manager.stop()
        writer.stop()
        raise
    server.start()
    rest = model_server_rest.start(manager, args)
    log.info(
        "model server listening on %s (model %s, base path %s, backend %s, batching %s)",
        address,
        args.model_name,
        args.model_base_path,
        ", ".join(f"v{v}: {m.backend}" for v, m in sorted(manager.serving().items())),
        f"max {config.execution_batch_size} rows / {config.batch_timeout_micros} us"
        if args.batching
        else "off",
    )
    manager.start(args.poll_seconds)
    on_versions_changed(manager)
    writer.write()

    while not stop.wait(0.5):
        pass
    started = time.monotonic()
    health.enter_graceful_shutdown()
    if rest is not None:
        rest.stop()
    server.stop(args.shutdown_grace_seconds).wait()
    manager.stop()
    writer.stop()
    summary = stats.as_dict()
    log.info(
        "stopped after %.1f s grace: %d requests in %d batches (rows per batch %s)",
        time.monotonic() - started,
        summary["requests"],
        summary["batches"],
        summary["rows_per_batch"],
    )
    return 0
