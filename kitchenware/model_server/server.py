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

import numpy as np

from kitchenware.core.contract import GRPC_PORT, MAX_MESSAGE_BYTES, MODEL_NAME, SIGNATURE
from kitchenware.core.errors import KitchenwareError
from kitchenware.model_server import rest as model_server_rest

log = logging.getLogger("kitchenware.model_server.server")

PREDICTION_SERVICE = "tensorflow.serving.PredictionService"


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
        "--num-versions",
        type=int,
        default=1,
        help="serve this many newest versions (TF Serving's latest{num_versions})",
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
        "--check-config",
        action="store_true",
        help="validate the flags and the batching file, print the settings, exit",
    )
    model_server_rest.add_arguments(parser)


def batching_config(args):
    """BatchingConfig from the flags, then the parameters file on top (as TF Serving reads it)."""
    from kitchenware.model_server.batching import BatchingConfig, load_batching_parameters

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


class StatsWriter:
    """Rewrites --stats-file (atomically) whenever batch counts or served versions change."""

    def __init__(self, path: str | None, collect):
        self.path = Path(path) if path else None
        self._collect = collect
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = None

    def write(self) -> None:
        if self.path is None:
            return
        with self._lock:
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text(json.dumps(self._collect(), indent=2, sort_keys=True))
            os.replace(tmp, self.path)

    def start(self, changed: threading.Event) -> None:
        if self.path is None:
            return

        def loop():
            while not self._stop.is_set():
                if changed.wait(0.2):
                    changed.clear()
                    self.write()

        self._thread = threading.Thread(target=loop, name="stats-writer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.write()


def read_stats(path: str | os.PathLike) -> dict:
    """The stats file as StatsWriter last wrote it; {} before its first write."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}


def shorten(text: str, limit: int = 200) -> str:
    """A client-supplied string as it may appear in an error message (bounded)."""
    text = str(text)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


def build_services(
    manager, model_name: str, stats=None, max_message_bytes: int = MAX_MESSAGE_BYTES
):
    """The gRPC servicers (PredictionService, ModelService) bound to a VersionManager.

    A decoded input may hold at most as many bytes as the largest message could
    carry packed, so the message-size cap bounds every tensor form.
    """
    import grpc
    from google.protobuf import any_pb2
    from tensorflow_serving.apis import (
        get_model_metadata_pb2,
        get_model_status_pb2,
        model_service_pb2_grpc,
        predict_pb2,
        prediction_service_pb2_grpc,
    )

    from kitchenware.model_server.batching import BatcherClosed, QueueFull, TaskTooLarge
    from kitchenware.serving import proto

    code = grpc.StatusCode

    def describe(spec) -> str:
        which = spec.WhichOneof("version_choice")
        if which == "version":
            return f"Specific({shorten(spec.name)}, {spec.version.value})"
        if which == "version_label":
            return f"Label({shorten(spec.name)}, {shorten(spec.version_label)})"
        return f"Latest({shorten(spec.name)})"

    def resolve(spec, context):
        """The LoadedVersion a model_spec asks for, or abort with TF Serving's code."""
        if spec.name != model_name:
            context.abort(code.NOT_FOUND, f"Servable not found for request: {describe(spec)}")
        which = spec.WhichOneof("version_choice")
        if which == "version_label":
            context.abort(
                code.INVALID_ARGUMENT,
                f"Unrecognized servable version label: {shorten(spec.version_label)}",
            )
        if which == "version":
            model = manager.serving().get(int(spec.version.value))
            if model is None:
                context.abort(
                    code.NOT_FOUND,
                    f"Servable not found for request: {describe(spec)}; "
                    f"serving versions {sorted(manager.serving())}",
                )
            return model
        model = manager.latest()
        if model is None:
            context.abort(
                code.UNAVAILABLE,
                f"no version of model {model_name!r} is loaded: {manager.not_loaded_reason()}",
            )
        return model

    def signature_of(model, name: str, context):
        signature = model.signatures.get(name or SIGNATURE)
        if signature is None:
            context.abort(
                code.FAILED_PRECONDITION, f'Serving signature key "{shorten(name)}" not found.'
            )
        return signature

    def decode_inputs(signature, request, context) -> dict[str, np.ndarray]:
        given, expected = set(request.inputs), set(signature.inputs)
        if given != expected:
            context.abort(
                code.INVALID_ARGUMENT,
                f"input names {shorten(sorted(given))} do not match signature {signature.name!r}: "
                f"expected {sorted(expected)}",
            )
        arrays, rows = {}, set()
        for name, tensor in request.inputs.items():
            spec = signature.inputs[name]
            if tensor.dtype != spec.dtype:
                context.abort(
                    code.INVALID_ARGUMENT,
                    f"input {name!r} must be {proto.dtype_name(spec.dtype)} "
                    f"but {proto.dtype_name(tensor.dtype)} was provided",
                )
            try:
                shape = proto.tensor_shape(tensor)
            except proto.ProtoError as exc:
                context.abort(code.INVALID_ARGUMENT, f"input {name!r}: {exc}")
            # Shape and size are checked before anything is allocated.
            if spec.dims is not None and (
                len(shape) != len(spec.dims)
                or any(d >= 0 and d != s for d, s in zip(spec.dims, shape, strict=True))
            ):
                context.abort(
                    code.INVALID_ARGUMENT,
                    f"input {name!r} has shape {list(shape)}; "
                    f"signature {signature.name!r} expects {list(spec.dims)} (-1: any size)",
                )
            if shape and shape[0] == 0:
                context.abort(code.INVALID_ARGUMENT, f"input {name!r} holds a batch of 0 rows")
            itemsize = (
                proto.numpy_dtype(spec.dtype).itemsize if spec.dtype in proto.DTYPE_NAMES else 1
            )
            try:
                array = proto.to_numpy(tensor, max_elements=max_message_bytes // max(1, itemsize))
            except proto.ProtoError as exc:
                context.abort(code.INVALID_ARGUMENT, f"input {name!r}: {exc}")
            arrays[name] = array
            if array.ndim:
                rows.add(array.shape[0])
        if len(rows) > 1:
            context.abort(
                code.INVALID_ARGUMENT, f"inputs disagree on the batch size: {sorted(rows)}"
            )
        return arrays

    class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
        def Predict(self, request, context):
            if stats is None:
                return self._predict(request, context)
            stats.enter()
            try:
                return self._predict(request, context)
            finally:
                stats.leave()

        def _predict(self, request, context):
            for attempt in range(2):
                model = resolve(request.model_spec, context)
                signature = signature_of(model, request.model_spec.signature_name, context)
                inputs = decode_inputs(signature, request, context)
                wanted = list(request.output_filter) or sorted(signature.outputs)
                unknown = [n for n in wanted if n not in signature.outputs]
                if unknown:
                    context.abort(
                        code.INVALID_ARGUMENT,
                        f"output tensor alias not found in signature: {shorten(unknown[0])}. Outputs "
                        f"expected to be in the set {{{','.join(sorted(signature.outputs))}}}.",
                    )
                try:
                    outputs = signature.predict(inputs)
                except QueueFull as exc:
                    context.abort(code.UNAVAILABLE, str(exc))
                except TaskTooLarge as exc:
                    context.abort(code.INVALID_ARGUMENT, str(exc))
                except BatcherClosed:
                    if attempt == 0:
                        continue  # the version was swapped between resolve and submit
                    context.abort(code.UNAVAILABLE, "model version is being unloaded")
                except Exception as exc:
                    log.exception("Predict on version %d failed", model.version)
                    context.abort(code.INTERNAL, f"running the model failed: {exc}")
                break
            response = predict_pb2.PredictResponse()
            response.model_spec.name = model_name
            response.model_spec.version.value = model.version
            response.model_spec.signature_name = signature.name
            for name in wanted:
                # Typed value fields, as TF Serving answers.
                response.outputs[name].CopyFrom(
                    proto.to_tensor_proto(outputs[name], encoding="typed")
                )
            return response

        def GetModelMetadata(self, request, context):
            model = resolve(request.model_spec, context)
            fields = list(request.metadata_field)
            if not fields:
                context.abort(
                    code.INVALID_ARGUMENT,
                    "GetModelMetadataRequest must specify at least one metadata_field",
                )
            for field in fields:
                if field != "signature_def":
                    context.abort(
                        code.INVALID_ARGUMENT, f"Metadata field {shorten(field)} is not supported"
                    )
            signature_map = get_model_metadata_pb2.SignatureDefMap()
            for name, signature_def in model.signature_defs.items():
                signature_map.signature_def[name].CopyFrom(signature_def)
            packed = any_pb2.Any()
            packed.Pack(signature_map)
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            response.model_spec.name = model_name
            response.model_spec.version.value = model.version
            response.metadata["signature_def"].CopyFrom(packed)
            return response

    class ModelService(model_service_pb2_grpc.ModelServiceServicer):
        """GetModelStatus: which versions are AVAILABLE, and why a failed one is not."""

        def GetModelStatus(self, request, context):
            spec = request.model_spec
            if spec.name != model_name:
                context.abort(
                    code.NOT_FOUND, f"Could not find any versions of model {shorten(spec.name)}"
                )
            states = {v: ("AVAILABLE", "") for v in manager.serving()}
            for version, reason in manager.failures().items():
                states.setdefault(version, ("END", reason))
            if spec.WhichOneof("version_choice") == "version":
                version = int(spec.version.value)
                if version not in states:
                    context.abort(
                        code.NOT_FOUND,
                        f"Could not find version {version} of model {shorten(spec.name)}",
                    )
                states = {version: states[version]}
            if not states:
                context.abort(
                    code.NOT_FOUND, f"Could not find any versions of model {shorten(spec.name)}"
                )
            response = get_model_status_pb2.GetModelStatusResponse()
            for version, (state, reason) in sorted(states.items(), reverse=True):
                entry = response.model_version_status.add()
                entry.version = version
                entry.state = get_model_status_pb2.ModelVersionStatus.State.Value(state)
                if reason:
                    entry.status.error_code = 2  # tensorflow.error.UNKNOWN
                    entry.status.error_message = reason
            return response

    return PredictionService(), ModelService()


def run(args) -> int:
    _check_args(args)
    config = batching_config(args)
    if args.check_config:
        print(json.dumps({"batching": args.batching, **config.__dict__}, indent=2, default=list))
        return 0
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    import grpc
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc
    from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

    from kitchenware.model_server.batching import BatchStats
    from kitchenware.model_server.servables import VersionManager

    stats = BatchStats()
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    manager_box = {}

    def update_health():
        manager = manager_box.get("manager")
        loaded = manager is not None and manager.latest() is not None
        state = (
            health_pb2.HealthCheckResponse.SERVING
            if loaded
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for service in ("", args.model_name, PREDICTION_SERVICE):
            health_servicer.set(service, state)
        stats.changed.set()  # the stats file reports served versions too

    manager = VersionManager(
        args.model_base_path,
        args.model_name,
        num_versions=args.num_versions,
        batching=config if args.batching else None,
        stats=stats,
        on_change=update_health,
    )
    manager_box["manager"] = manager

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
    prediction, model_service = build_services(
        manager, args.model_name, stats, args.max_message_bytes
    )
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(prediction, server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(model_service, server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    address = f"{args.host}:{args.port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise KitchenwareError(f"cannot listen on {address}: {exc}") from None
    if not bound:
        raise KitchenwareError(f"cannot listen on {address}")

    stop = threading.Event()

    def on_signal(signum, _frame):
        log.info("received %s: shutting down", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    update_health()
    server.start()
    rest = model_server_rest.start(manager, args)
    log.info(
        "model server listening on %s (model %s, base path %s, batching %s)",
        address,
        args.model_name,
        args.model_base_path,
        f"max {config.execution_batch_size} rows / {config.batch_timeout_micros} us"
        if args.batching
        else "off",
    )
    if not Path(args.model_base_path).is_dir():
        log.warning("%s does not exist yet; polling for versions", args.model_base_path)
    writer.start(stats.changed)
    manager.start(args.poll_seconds)
    update_health()
    writer.write()

    while not stop.wait(0.5):
        pass
    started = time.monotonic()
    health_servicer.enter_graceful_shutdown()
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
