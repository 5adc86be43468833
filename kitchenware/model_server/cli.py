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
from pathlib import Path

from kitchenware.core.contract import GRPC_PORT, MAX_MESSAGE_BYTES, MODEL_NAME
from kitchenware.core.errors import KitchenwareError
from kitchenware.model_server import rest as model_server_rest

# This module holds the flags and the start-up order; the servicers are in `services`,
# the stats file in `stats`. The logger keeps the name operators already filter on.
log = logging.getLogger("kitchenware.model_server")


def add_arguments(parser) -> None:
    parser.add_argument(
        "--model-base-path",
        "--model_base_path",
        dest="model_base_path",
        default=f"models/{MODEL_NAME}",
        help="folder holding numbered SavedModel versions",
    )
    parser.add_argument(
        "--model-name",
        "--model_name",
        dest="model_name",
        default=MODEL_NAME,
        help="name clients put in model_spec.name",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to bind (0.0.0.0 in a container)"
    )
    parser.add_argument("--port", type=int, default=GRPC_PORT, help="gRPC port")
    parser.add_argument(
        "--enable-batching",
        "--enable_batching",
        dest="batching",
        action="store_true",
        default=True,
        help="batch concurrent requests on the server",
    )
    parser.add_argument(
        "--no-batching", dest="batching", action="store_false", help="run every request alone"
    )
    parser.add_argument("--max-batch-size", type=int, default=32, help="rows per batch at most")
    parser.add_argument(
        "--batch-timeout-ms",
        type=float,
        default=5.0,
        help="how long the oldest queued request waits for others",
    )
    parser.add_argument("--num-batch-threads", type=int, default=1, help="batches run in parallel")
    parser.add_argument(
        "--batching-parameters-file",
        "--batching_parameters_file",
        dest="batching_parameters_file",
        default=None,
        help="TF Serving's batching parameters (text format); overrides the flags",
    )
    parser.add_argument(
        "--poll-seconds",
        "--file_system_poll_wait_seconds",
        dest="poll_seconds",
        type=float,
        default=2.0,
        help="look for new versions this often (0: load once)",
    )
    parser.add_argument(
        "--max-num-load-retries",
        "--max_num_load_retries",
        dest="max_num_load_retries",
        type=int,
        default=5,
        help="before the first version serves: retry a failed load this often, then exit 1",
    )
    parser.add_argument(
        "--load-retry-interval-seconds",
        dest="load_retry_interval_seconds",
        type=float,
        default=60.0,
        help="wait between those retries (TF Serving's --load_retry_interval_micros)",
    )
    parser.add_argument(
        "--num-versions",
        type=int,
        default=1,
        help="serve this many newest versions (TF Serving's latest{num_versions})",
    )
    parser.add_argument(
        "--warmup-iterations",
        type=int,
        default=1,
        help="run each warm-up record this many times "
        "(TF Serving's ModelWarmupOptions.num_request_iterations)",
    )
    parser.add_argument(
        "--max-message-bytes",
        type=int,
        default=MAX_MESSAGE_BYTES,
        help="largest gRPC message in/out",
    )
    parser.add_argument("--grpc-threads", type=int, default=64, help="concurrent RPCs at most")
    parser.add_argument(
        "--shutdown-grace-seconds",
        type=float,
        default=10.0,
        help="on SIGTERM, wait this long for in-flight requests",
    )
    parser.add_argument(
        "--stats-file",
        default=None,
        help="keep a JSON file with served versions, load failures and batch counts up to date",
    )
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    parser.add_argument(
        "--backend",
        choices=["auto", "tensorflow", "openvino"],
        default="auto",
        help="runtime: tensorflow (the SavedModel), openvino (the IR the export wrote; no "
        "TensorFlow imported), auto (OpenVINO when every signature has IR and its self-test "
        "passes, else TensorFlow)",
    )
    parser.add_argument(
        "--check-config",
        action="store_true",
        help="validate the flags and the batching file, print the settings, exit",
    )
    model_server_rest.add_arguments(parser)


def batching_config(args):
    """BatchingConfig from the flags, then the parameters file on top (as TF Serving reads it)."""
    from kitchenware.model_server.batching_config import BatchingConfig, load_batching_parameters

    base = BatchingConfig(
        max_batch_size=args.max_batch_size,
        batch_timeout_micros=int(round(args.batch_timeout_ms * 1000)),
        num_batch_threads=args.num_batch_threads,
    )
    if args.batching_parameters_file:
        return load_batching_parameters(args.batching_parameters_file, base)
    return base


def _check_args(args) -> None:
    if not 0 < args.port < 65536:
        raise KitchenwareError(f"--port must be 1..65535, got {args.port}")
    if args.num_versions < 1:
        raise KitchenwareError(f"--num-versions must be >= 1, got {args.num_versions}")
    if args.max_message_bytes < 1024:
        raise KitchenwareError(f"--max-message-bytes is too small: {args.max_message_bytes}")
    if args.grpc_threads < 1:
        raise KitchenwareError(f"--grpc-threads must be >= 1, got {args.grpc_threads}")
    if args.poll_seconds < 0:
        raise KitchenwareError(f"--poll-seconds must be >= 0, got {args.poll_seconds}")
    if args.max_num_load_retries < 0:
        raise KitchenwareError(
            f"--max-num-load-retries must be >= 0, got {args.max_num_load_retries}"
        )
    if args.load_retry_interval_seconds < 0:
        raise KitchenwareError(
            f"--load-retry-interval-seconds must be >= 0, got {args.load_retry_interval_seconds}"
        )
    if args.warmup_iterations < 1:
        raise KitchenwareError(f"--warmup-iterations must be >= 1, got {args.warmup_iterations}")


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
    _check_args(args)
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
