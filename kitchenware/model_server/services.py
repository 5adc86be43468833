"""The model server's gRPC services: TF Serving's PredictionService and ModelService, and health.

Each servicer takes what it needs (the VersionManager, the model name, the
batch stats, the message-size cap) in its constructor, so the server builds
them in plain start-up order and tests can build one alone. Status codes and
messages are TF Serving's, so clients cannot tell the two servers apart.
"""

from __future__ import annotations

import logging

import grpc
import numpy as np
from google.protobuf import any_pb2
from grpc_health.v1 import health, health_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from kitchenware.core.contract import MAX_MESSAGE_BYTES, SIGNATURE
from kitchenware.model_server.batcher import BatcherClosed, BatchStats, QueueFull, TaskTooLarge
from kitchenware.model_server.servables import LoadedVersion, VersionManager
from kitchenware.serving import proto

log = logging.getLogger("kitchenware.model_server")

PREDICTION_SERVICE = "tensorflow.serving.PredictionService"
code = grpc.StatusCode


def shorten(text: str, limit: int = 200) -> str:
    """A client-supplied string as it may appear in an error message (bounded)."""
    text = str(text)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


def describe(spec) -> str:
    """A model_spec as TF Serving names it in errors: Specific / Label / Latest."""
    which = spec.WhichOneof("version_choice")
    if which == "version":
        return f"Specific({shorten(spec.name)}, {spec.version.value})"
    if which == "version_label":
        return f"Label({shorten(spec.name)}, {shorten(spec.version_label)})"
    return f"Latest({shorten(spec.name)})"


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    """Predict and GetModelMetadata on the versions a VersionManager serves.

    A decoded input may hold at most as many bytes as the largest message could
    carry packed, so the message-size cap bounds every tensor form.
    """

    def __init__(
        self,
        manager: VersionManager,
        model_name: str,
        stats: BatchStats | None = None,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
    ):
        self.manager = manager
        self.model_name = model_name
        self.stats = stats
        self.max_message_bytes = max_message_bytes

    def Predict(self, request, context):
        if self.stats is None:
            return self._predict(request, context)
        self.stats.enter()
        try:
            return self._predict(request, context)
        finally:
            self.stats.leave()

    def _predict(self, request, context):
        for attempt in range(2):
            model = self._resolve(request.model_spec, context)
            signature = self._signature_of(model, request.model_spec.signature_name, context)
            inputs = self._decode_inputs(signature, request, context)
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
                if self.stats is not None:
                    self.stats.refused()
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
        response.model_spec.name = self.model_name
        response.model_spec.version.value = model.version
        response.model_spec.signature_name = signature.name
        for name in wanted:
            # Typed value fields, as TF Serving answers.
            response.outputs[name].CopyFrom(proto.to_tensor_proto(outputs[name], encoding="typed"))
        return response

    def GetModelMetadata(self, request, context):
        model = self._resolve(request.model_spec, context)
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
        response.model_spec.name = self.model_name
        response.model_spec.version.value = model.version
        response.metadata["signature_def"].CopyFrom(packed)
        return response

    def _resolve(self, spec, context) -> LoadedVersion:
        """The LoadedVersion a model_spec asks for, or abort with TF Serving's code."""
        if spec.name != self.model_name:
            context.abort(code.NOT_FOUND, f"Servable not found for request: {describe(spec)}")
        which = spec.WhichOneof("version_choice")
        if which == "version_label":
            context.abort(
                code.INVALID_ARGUMENT,
                f"Unrecognized servable version label: {shorten(spec.version_label)}",
            )
        if which == "version":
            model = self.manager.serving().get(int(spec.version.value))
            if model is None:
                context.abort(
                    code.NOT_FOUND,
                    f"Servable not found for request: {describe(spec)}; "
                    f"serving versions {sorted(self.manager.serving())}",
                )
            return model
        model = self.manager.latest()
        if model is None:
            # TF Serving's manager answers NOT_FOUND for Latest(name) with no loaded version.
            context.abort(
                code.NOT_FOUND,
                f"Servable not found for request: {describe(spec)}; "
                f"{self.manager.not_loaded_reason()}",
            )
        return model

    @staticmethod
    def _signature_of(model: LoadedVersion, name: str, context):
        signature = model.signatures.get(name or SIGNATURE)
        if signature is None:
            context.abort(
                code.FAILED_PRECONDITION, f'Serving signature key "{shorten(name)}" not found.'
            )
        return signature

    def _decode_inputs(self, signature, request, context) -> dict[str, np.ndarray]:
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
                array = proto.to_numpy(
                    tensor, max_elements=self.max_message_bytes // max(1, itemsize)
                )
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


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    """GetModelStatus: which versions are AVAILABLE, and why a failed one is not."""

    def __init__(self, manager: VersionManager, model_name: str):
        self.manager = manager
        self.model_name = model_name

    def GetModelStatus(self, request, context):
        spec = request.model_spec
        if spec.name != self.model_name:
            context.abort(
                code.NOT_FOUND, f"Could not find any versions of model {shorten(spec.name)}"
            )
        states = {v: ("AVAILABLE", "") for v in self.manager.serving()}
        for version, reason in self.manager.failures().items():
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


class ModelHealth(health.HealthServicer):
    """grpc.health.v1 for the server, the model and PredictionService: SERVING only while a
    version is loaded, so load balancers and Kubernetes probes route to loaded servers only."""

    def __init__(self, model_name: str):
        super().__init__(experimental_non_blocking=True)
        self.services = ("", model_name, PREDICTION_SERVICE)

    def report(self, manager: VersionManager) -> None:
        """Set every service's status from whether `manager` serves a version now."""
        state = (
            health_pb2.HealthCheckResponse.SERVING
            if manager.latest() is not None
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for service in self.services:
            self.set(service, state)
