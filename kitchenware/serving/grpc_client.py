"""gRPC client for TF Serving's PredictionService (official TF Serving or our model server).

Nothing about the model is hard-coded: the input name, dtype and image size and
the output names come from `GetModelMetadata`, cached and refreshed when a
Predict answer reports another version than the cached one. Only the official
protos and behaviour are used, so the same client works against the
`tensorflow/serving` image. Readiness uses GetModelMetadata because the
ModelService protos need TensorFlow, which the gateway tier does not have.

Every call has a deadline; UNAVAILABLE is retried with backoff by gRPC itself
(service-config `retryPolicy`) under gRPC's retry throttling (`retryThrottling`),
so an overloaded server sees few retries; `dns:///host:port` targets are
balanced over all resolved addresses with `round_robin`.

Keep one `ServingClient` per process: it owns one channel.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass

import grpc
import numpy as np
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from kitchenware.core.contract import (
    EXPLAIN_SIGNATURE,
    GRPC_PORT,
    MAX_MESSAGE_BYTES,
    MODEL_NAME,
    OUTPUT_CLASSES,
    OUTPUT_HEATMAP,
    OUTPUT_PROBABILITIES,
    SIGNATURE,
)
from kitchenware.core.errors import KitchenwareError
from kitchenware.serving import proto

DEFAULT_TARGET = f"localhost:{GRPC_PORT}"
DEFAULT_TIMEOUT = 10.0
PREDICTION_SERVICE = "tensorflow.serving.PredictionService"

_INPUT_DTYPES = {types_pb2.DT_UINT8: np.uint8, types_pb2.DT_FLOAT: np.float32}


class ModelServerError(KitchenwareError):
    """The model server refused or failed a call. `code` is the grpc.StatusCode (or None)."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None):
        super().__init__(message)
        self.code = code
        self.message = message


class ModelServerUnavailable(ModelServerError):
    """The model server cannot be reached, or has no model loaded (gateway: 503)."""


class ModelServerTimeout(ModelServerError):
    """The call's deadline passed (gateway: 504)."""


class ModelContractError(ModelServerError):
    """The served signature is not one this client can drive (e.g. no 4-D image input)."""


class ExplainUnsupported(ModelServerError):
    """The served model version has no `explain` signature (exported before it existed)."""


def _error_from_rpc(
    exc: grpc.RpcError, what: str, disconnected: bool = False, latest: bool = True
) -> ModelServerError:
    code = exc.code() if hasattr(exc, "code") else None
    details = exc.details() if hasattr(exc, "details") else str(exc)
    message = f"{what}: {code.name if code else 'error'}: {details}"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED and disconnected:
        # The deadline ran out while gRPC was still retrying a connection that
        # kept failing: the server is unreachable, not slow.
        return ModelServerUnavailable(f"{message} (cannot connect to the model server)", code)
    if code == grpc.StatusCode.UNAVAILABLE or (code == grpc.StatusCode.NOT_FOUND and latest):
        # Official TF Serving answers NOT_FOUND for Latest(model) until a version is loaded.
        return ModelServerUnavailable(message, code)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return ModelServerTimeout(message, code)
    return ModelServerError(message, code)


@dataclass(frozen=True)
class ModelMetadata:
    """What the served signature declares, as discovered from GetModelMetadata."""

    name: str
    version: int
    signature: str
    input_name: str
    input_dtype: str  # "uint8" or "float32"
    image_size: int  # 0 when the model accepts any size
    output_names: tuple[str, ...]
    probabilities_output: str
    classes_output: str | None  # None when the model carries no class names
    signatures: tuple[str, ...] = ()  # every signature the version serves


@dataclass(frozen=True)
class Prediction:
    probabilities: np.ndarray  # float32 [N, C]
    classes: list[str]  # C names, in the order of the probabilities' columns
    version: int


@dataclass(frozen=True)
class Explanation:
    """The `explain` signature's answer: the prediction and the top class's Grad-CAM map."""

    prediction: Prediction
    heatmap: np.ndarray  # float32 [N, H, W] in [0, 1], over the backbone's last feature grid


# gRPC retry throttling (gRFC A6, "Throttling Retry Attempts"): a token bucket per
# server name starts at MAX_TOKENS; each UNAVAILABLE costs 1, each success earns
# TOKEN_RATIO, and no retry is sent while tokens <= MAX_TOKENS / 2. Needed because
# TF Serving answers a full batching queue with UNAVAILABLE ("The batch scheduling
# queue to which this task was submitted is full", tensorflow/core/kernels/
# batching_util/shared_batch_scheduler.h) and sends no retry pushback: without a
# throttle every refused call came back up to max_attempts times. Connection
# failures share that code, so UNAVAILABLE stays retryable for restarts.
RETRY_MAX_TOKENS = 10
RETRY_TOKEN_RATIO = 0.1


def service_config(
    max_attempts: int = 5,
    initial_backoff_s: float = 0.2,
    max_backoff_s: float = 2.0,
    load_balancing: str = "round_robin",
    retry_throttling: tuple[float, float] | None = (RETRY_MAX_TOKENS, RETRY_TOKEN_RATIO),
) -> str:
    """gRPC service config: retry UNAVAILABLE with backoff, throttled; balance with `load_balancing`.

    `retry_throttling` is (maxTokens, tokenRatio), or None for unthrottled retries.
    """
    config = {
        "loadBalancingConfig": [{load_balancing: {}}],
        "methodConfig": [
            {
                "name": [{"service": PREDICTION_SERVICE}],
                "retryPolicy": {
                    "maxAttempts": int(max_attempts),
                    "initialBackoff": f"{initial_backoff_s}s",
                    "maxBackoff": f"{max_backoff_s}s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ],
    }
    if retry_throttling is not None:
        max_tokens, token_ratio = retry_throttling
        config["retryThrottling"] = {"maxTokens": max_tokens, "tokenRatio": token_ratio}
    return json.dumps(config)


def channel_options(
    max_message_bytes: int = MAX_MESSAGE_BYTES,
    max_attempts: int = 5,
    max_reconnect_backoff_ms: int = 2000,
    load_balancing: str = "round_robin",
    retry_throttling: tuple[float, float] | None = (RETRY_MAX_TOKENS, RETRY_TOKEN_RATIO),
) -> list[tuple[str, object]]:
    config = service_config(
        max_attempts, load_balancing=load_balancing, retry_throttling=retry_throttling
    )
    return [
        ("grpc.max_send_message_length", int(max_message_bytes)),
        ("grpc.max_receive_message_length", int(max_message_bytes)),
        ("grpc.enable_retries", 1),
        ("grpc.service_config", config),
        # A restarted model server is found again within ~2 s, not after minutes of backoff.
        ("grpc.initial_reconnect_backoff_ms", min(1000, int(max_reconnect_backoff_ms))),
        ("grpc.max_reconnect_backoff_ms", int(max_reconnect_backoff_ms)),
    ]


def _dims(tensor_info) -> list[int]:
    if tensor_info.tensor_shape.unknown_rank:
        return []
    return [int(d.size) for d in tensor_info.tensor_shape.dim]


def parse_metadata(
    response: get_model_metadata_pb2.GetModelMetadataResponse, signature: str
) -> ModelMetadata:
    """Pick the image input and the outputs out of a GetModelMetadataResponse."""
    name = response.model_spec.name
    version = int(response.model_spec.version.value)
    if "signature_def" not in response.metadata:
        raise ModelContractError(f"model {name!r} metadata has no signature_def")
    signatures = get_model_metadata_pb2.SignatureDefMap()
    if not response.metadata["signature_def"].Unpack(signatures):
        raise ModelContractError(f"model {name!r}: signature_def is not a SignatureDefMap")
    if signature not in signatures.signature_def:
        known = sorted(k for k in signatures.signature_def if not k.startswith("__"))
        raise ModelContractError(
            f"model {name!r} version {version} has no signature {signature!r} (has {known})"
        )
    sig = signatures.signature_def[signature]
    if len(sig.inputs) != 1:
        raise ModelContractError(
            f"signature {signature!r} takes inputs {sorted(sig.inputs)}; expected one image input"
        )
    input_name, info = next(iter(sig.inputs.items()))
    if info.dtype not in _INPUT_DTYPES:
        raise ModelContractError(
            f"input {input_name!r} is {proto.dtype_name(info.dtype)}; expected uint8 or float32"
        )
    dims = _dims(info)
    if len(dims) != 4 or dims[3] != 3 or dims[1] != dims[2]:
        raise ModelContractError(
            f"input {input_name!r} has shape {dims}; expected [batch, size, size, 3]"
        )
    image_size = max(dims[1], 0)

    outputs = dict(sig.outputs)
    floats = [k for k, v in outputs.items() if v.dtype == types_pb2.DT_FLOAT]
    texts = [k for k, v in outputs.items() if v.dtype == types_pb2.DT_STRING]
    probabilities = OUTPUT_PROBABILITIES if OUTPUT_PROBABILITIES in floats else None
    if probabilities is None and len(floats) == 1:
        probabilities = floats[0]
    if probabilities is None:
        raise ModelContractError(
            f"signature {signature!r} outputs {sorted(outputs)}: no single float32 output "
            f"named {OUTPUT_PROBABILITIES!r}"
        )
    classes = OUTPUT_CLASSES if OUTPUT_CLASSES in texts else (texts[0] if len(texts) == 1 else None)
    return ModelMetadata(
        name=name,
        version=version,
        signature=signature,
        input_name=input_name,
        input_dtype=proto.dtype_name(info.dtype),
        image_size=image_size,
        output_names=tuple(sorted(outputs)),
        probabilities_output=probabilities,
        classes_output=classes,
        signatures=tuple(sorted(k for k in signatures.signature_def if not k.startswith("__"))),
    )


class ServingClient:
    """One gRPC channel to a TF-Serving-compatible model server."""

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        model_name: str = MODEL_NAME,
        timeout: float = DEFAULT_TIMEOUT,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        signature: str = SIGNATURE,
        max_attempts: int = 5,
        max_reconnect_backoff_ms: int = 2000,
        load_balancing: str = "round_robin",
        retry_throttling: tuple[float, float] | None = (RETRY_MAX_TOKENS, RETRY_TOKEN_RATIO),
    ):
        if timeout <= 0:
            raise KitchenwareError(f"gRPC timeout must be positive, got {timeout}")
        self.target = target
        self.model_name = model_name
        self.timeout = float(timeout)
        self.signature = signature
        self.max_message_bytes = int(max_message_bytes)
        self._channel = grpc.insecure_channel(
            target,
            options=channel_options(
                max_message_bytes,
                max_attempts,
                max_reconnect_backoff_ms,
                load_balancing,
                retry_throttling,
            ),
        )
        self._stub = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self._lock = threading.Lock()
        self._metadata: ModelMetadata | None = None
        self._connectivity = grpc.ChannelConnectivity.IDLE
        self._channel.subscribe(self._on_connectivity, try_to_connect=False)

    def _on_connectivity(self, state: grpc.ChannelConnectivity) -> None:
        self._connectivity = state

    def _error(self, exc: grpc.RpcError, what: str, latest: bool = True) -> ModelServerError:
        disconnected = self._connectivity == grpc.ChannelConnectivity.TRANSIENT_FAILURE
        return _error_from_rpc(exc, what, disconnected, latest)

    # -- metadata ---------------------------------------------------------
    def metadata(self, refresh: bool = False, timeout: float | None = None) -> ModelMetadata:
        """The served signature's contract (cached; `refresh=True` asks the server again)."""
        with self._lock:
            cached = self._metadata
        if cached is not None and not refresh:
            return cached
        request = get_model_metadata_pb2.GetModelMetadataRequest()
        request.model_spec.name = self.model_name
        request.metadata_field.append("signature_def")
        try:
            response = self._stub.GetModelMetadata(request, timeout=timeout or self.timeout)
        except grpc.RpcError as exc:
            raise self._error(exc, f"GetModelMetadata({self.model_name})") from None
        metadata = parse_metadata(response, self.signature)
        with self._lock:
            self._metadata = metadata
        return metadata

    def _forget_metadata(self) -> None:
        with self._lock:
            self._metadata = None

    # -- predict ----------------------------------------------------------
    def predict(
        self, images: np.ndarray, version: int | None = None, timeout: float | None = None
    ) -> Prediction:
        """Class probabilities for a batch of images [N, S, S, 3] (uint8 pixels 0..255).

        `version` asks for a specific model version instead of the latest.
        """
        meta = self.metadata()
        request = self._request(meta, meta.signature, images, version)
        response = self._call_predict(request, version, timeout)
        return self._prediction(response, meta, len(images))

    def explain(
        self, images: np.ndarray, version: int | None = None, timeout: float | None = None
    ) -> Explanation:
        """The prediction plus the top class's Grad-CAM map (the `explain` signature).

        Raises ExplainUnsupported when the served version has no such signature.
        """
        meta = self.metadata()
        if EXPLAIN_SIGNATURE not in meta.signatures:
            meta = self.metadata(refresh=True)  # a newer version may have it
        if EXPLAIN_SIGNATURE not in meta.signatures:
            raise ExplainUnsupported(
                f"model {meta.name!r} version {meta.version} has no {EXPLAIN_SIGNATURE!r} "
                f"signature (it serves {list(meta.signatures)}); export it again with this "
                "release to get explanations"
            )
        request = self._request(meta, EXPLAIN_SIGNATURE, images, version)
        request.output_filter.append(OUTPUT_HEATMAP)
        try:
            response = self._call_predict(request, version, timeout)
        except ModelServerError as exc:
            if exc.code == grpc.StatusCode.FAILED_PRECONDITION and EXPLAIN_SIGNATURE in str(exc):
                raise ExplainUnsupported(str(exc), exc.code) from None
            raise
        prediction = self._prediction(response, meta, len(images))
        if OUTPUT_HEATMAP not in response.outputs:
            raise ModelContractError(
                f"explain answer lacks output {OUTPUT_HEATMAP!r} (has {sorted(response.outputs)})"
            )
        heatmap = proto.to_numpy(response.outputs[OUTPUT_HEATMAP]).astype(np.float32)
        if heatmap.ndim != 3 or heatmap.shape[0] != len(images):
            raise ModelContractError(
                f"output {OUTPUT_HEATMAP!r} has shape {list(heatmap.shape)} for {len(images)} "
                "images; expected [images, height, width]"
            )
        return Explanation(prediction=prediction, heatmap=heatmap)

    def _request(
        self, meta: ModelMetadata, signature: str, images: np.ndarray, version: int | None
    ) -> predict_pb2.PredictRequest:
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[3] != 3:
            raise KitchenwareError(f"images must be [N, size, size, 3], got {list(images.shape)}")
        if meta.image_size and images.shape[1:3] != (meta.image_size, meta.image_size):
            raise KitchenwareError(
                f"model {meta.name} version {meta.version} expects "
                f"{meta.image_size}x{meta.image_size} images, got "
                f"{images.shape[1]}x{images.shape[2]}"
            )
        dtype = np.uint8 if meta.input_dtype == "uint8" else np.float32
        request = predict_pb2.PredictRequest()
        request.model_spec.name = self.model_name
        request.model_spec.signature_name = signature
        if version is not None:
            request.model_spec.version.value = int(version)
        request.inputs[meta.input_name].CopyFrom(proto.to_tensor_proto(images.astype(dtype)))
        request.output_filter.append(meta.probabilities_output)
        if meta.classes_output:
            request.output_filter.append(meta.classes_output)
        return request

    def _call_predict(self, request, version: int | None, timeout: float | None = None):
        try:
            return self._stub.Predict(request, timeout=timeout or self.timeout)
        except grpc.RpcError as exc:
            if exc.code() in (
                grpc.StatusCode.INVALID_ARGUMENT,
                grpc.StatusCode.NOT_FOUND,
                grpc.StatusCode.FAILED_PRECONDITION,
            ):
                self._forget_metadata()  # the model may have changed under us
            raise self._error(exc, f"Predict({self.model_name})", version is None) from None

    def _prediction(self, response, meta: ModelMetadata, count: int) -> Prediction:
        served = int(response.model_spec.version.value)
        if served != meta.version:
            # Another version answered: refresh the contract on the next call.
            self._forget_metadata()
        outputs = response.outputs
        if meta.probabilities_output not in outputs:
            raise ModelContractError(
                f"Predict answer lacks output {meta.probabilities_output!r} (has {sorted(outputs)})"
            )
        probabilities = proto.to_numpy(outputs[meta.probabilities_output]).astype(np.float32)
        if probabilities.ndim != 2 or probabilities.shape[0] != count:
            raise ModelContractError(
                f"output {meta.probabilities_output!r} has shape {list(probabilities.shape)} "
                f"for {count} images; expected [{count}, classes]"
            )
        classes: list[str] = []
        if meta.classes_output and meta.classes_output in outputs:
            names = proto.strings(proto.to_numpy(outputs[meta.classes_output]))
            if names.size:
                classes = [str(n) for n in names.reshape(-1, names.shape[-1])[0]]
        if not classes:
            classes = [str(i) for i in range(probabilities.shape[1])]
        if len(classes) != probabilities.shape[1]:
            raise ModelContractError(
                f"{len(classes)} class names for {probabilities.shape[1]} probabilities"
            )
        return Prediction(probabilities=probabilities, classes=classes, version=served)

    # -- readiness --------------------------------------------------------
    def check_ready(self, timeout: float | None = None) -> tuple[bool, str]:
        """(True, description) when the server answers and the model is loaded, else (False, reason)."""
        try:
            meta = self.metadata(refresh=True, timeout=timeout)
        except ModelServerError as exc:
            return False, str(exc)
        return True, (
            f"model {meta.name} version {meta.version} loaded "
            f"(input {meta.input_name} {meta.input_dtype} {meta.image_size}px)"
        )

    def close(self) -> None:
        self._channel.unsubscribe(self._on_connectivity)
        self._channel.close()

    def __enter__(self) -> ServingClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
