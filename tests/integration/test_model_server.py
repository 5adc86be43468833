"""The model server as a real process on 127.0.0.1, driven with the official TF Serving protos
and with our client: happy path, TF Serving's error codes, version polling, broken versions,
batching, health, SIGTERM, and the client's behaviour when the server dies and comes back."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support.paths import REPO, TINY_SIZE
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from devtools.stack import ModelServer, wait_for
from kitchenware.model_server.openvino_runtime import SELF_TEST_ATOL
from kitchenware.serving import proto
from kitchenware.serving.grpc_client import (
    ModelServerError,
    ModelServerTimeout,
    ModelServerUnavailable,
    ServingClient,
)

pytestmark = pytest.mark.slow
SERVING = health_pb2.HealthCheckResponse.SERVING


def copy_version(source_version_dir: Path, base: Path, version: int) -> Path:
    """Put a copy of an exported version at BASE/<version> atomically (staging + rename), as
    `kitchenware export` does, so a polling server never sees a half-written folder."""
    base.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=base))
    shutil.copytree(source_version_dir, staging, dirs_exist_ok=True)
    target = base / str(version)
    os.rename(staging, target)
    return target


def health_status(target: str, service: str = "", timeout: float = 1.0):
    """The grpc.health.v1 status of `service`, or None when the server does not answer."""
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            return stub.Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            ).status
        except grpc.RpcError:
            return None


def images(n: int, seed: int = 0, size: int = TINY_SIZE) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def base(exported_model, tmp_path_factory, backend):
    """A private copy of the exported model's base path (tests add versions to it)."""
    path = tmp_path_factory.mktemp(f"served-{backend}") / "kitchenware"
    copy_version(exported_model / "1", path, 1)
    return path


@pytest.fixture(scope="module")
def server(base, backend):
    process = ModelServer(
        base, base.parent, extra=["--num-versions", "2", "--max-batch-size", "16",
                                  "--batch-timeout-ms", "100"], backend=backend,
    )  # fmt: skip
    with process:
        yield process


@pytest.fixture(scope="module")
def stub(server):
    with grpc.insecure_channel(server.target) as channel:
        yield prediction_service_pb2_grpc.PredictionServiceStub(channel)


def predict_request(pixels, **spec) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = spec.pop("name", "kitchenware")
    for key, value in spec.items():
        if key == "version":
            request.model_spec.version.value = value
        else:
            setattr(request.model_spec, key, value)
    request.inputs["image"].CopyFrom(proto.to_tensor_proto(pixels))
    return request


def test_predict_matches_the_savedmodel_in_process(server, stub, exported_model, backend):
    import tensorflow as tf

    pixels = images(3)
    # Encoded by TensorFlow itself, as any TF Serving client would.
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "kitchenware"
    request.inputs["image"].CopyFrom(tf.make_tensor_proto(pixels))
    response = stub.Predict(request, timeout=30)

    assert response.model_spec.name == "kitchenware"
    assert response.model_spec.version.value == 1
    assert response.model_spec.signature_name == "serving_default"
    served = tf.make_ndarray(response.outputs["probabilities"])
    expected = tf.saved_model.load(str(exported_model / "1")).signatures["serving_default"](
        image=tf.constant(pixels)
    )
    # OpenVINO may run in bf16 (docu/deploy.md states the tolerance); TF is the same graph.
    atol = SELF_TEST_ATOL if backend == "openvino" else 1e-6
    np.testing.assert_allclose(served, expected["probabilities"].numpy(), rtol=1e-4, atol=atol)
    assert served.dtype == np.float32 and served.shape == (3, 6)
    assert server.model_status_backends() == {1: backend}
    assert server.stats()["backend"]["1"]["name"] == backend
    assert "loaded version 1 in" in server.log() and f"on {backend}" in server.log()
    np.testing.assert_allclose(served.sum(axis=1), 1.0, rtol=1e-5)
    classes = proto.strings(proto.to_numpy(response.outputs["classes"]))
    assert classes[0].tolist() == ["cup", "fork", "glass", "knife", "plate", "spoon"]


def test_metadata_and_client_discovery(server):
    with ServingClient(server.target, timeout=30) as client:
        meta = client.metadata()
        assert (meta.input_name, meta.input_dtype, meta.image_size) == ("image", "uint8", TINY_SIZE)
        assert meta.output_names == ("classes", "probabilities")
        assert (meta.probabilities_output, meta.classes_output) == ("probabilities", "classes")
        prediction = client.predict(images(2, seed=1))
        assert prediction.probabilities.shape == (2, 6)
        assert prediction.probabilities.dtype == np.float32
        assert prediction.classes == ["cup", "fork", "glass", "knife", "plate", "spoon"]
        assert prediction.version == meta.version
        ready, reason = client.check_ready()
        assert ready and "version" in reason


def test_dns_target_with_round_robin(server):
    """`dns:///localhost:PORT` resolves to ::1 and 127.0.0.1; round_robin uses the one that answers."""
    with ServingClient(f"dns:///localhost:{server.port}", timeout=30) as client:
        assert client.predict(images(1)).probabilities.shape == (1, 6)


def metadata_request(*fields, name="kitchenware"):
    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = name
    request.metadata_field.extend(fields)
    return request


def bad_predict_requests():
    pixels = images(1)
    wrong_name = predict_request(pixels)
    wrong_name.inputs["pixels"].CopyFrom(wrong_name.inputs.pop("image"))
    extra_filter = predict_request(pixels)
    extra_filter.output_filter.append("logits")
    bad_content = predict_request(pixels)
    bad_content.inputs["image"].tensor_content = b"\0" * 10

    def claimed(*shape, values=()):
        """An image tensor claiming `shape` while carrying almost nothing (tiny on the wire)."""
        request = predict_request(pixels)
        tensor = request.inputs["image"]
        tensor.ClearField("tensor_content")
        del tensor.tensor_shape.dim[:]
        for size in shape:
            tensor.tensor_shape.dim.add(size=size)
        tensor.int_val.extend(values)
        return request

    return {
        "unknown-model": (predict_request(pixels, name="teapot"), grpc.StatusCode.NOT_FOUND),
        "unknown-version": (predict_request(pixels, version=99), grpc.StatusCode.NOT_FOUND),
        "version-label": (
            predict_request(pixels, version_label="stable"),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        # TF Serving answers FAILED_PRECONDITION for an unknown signature key.
        "unknown-signature": (
            predict_request(pixels, signature_name="classify"),
            grpc.StatusCode.FAILED_PRECONDITION,
        ),
        "wrong-input-name": (wrong_name, grpc.StatusCode.INVALID_ARGUMENT),
        "wrong-dtype": (
            predict_request(pixels.astype(np.float32)),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        "wrong-size": (predict_request(images(1, size=64)), grpc.StatusCode.INVALID_ARGUMENT),
        "wrong-rank": (predict_request(pixels[0]), grpc.StatusCode.INVALID_ARGUMENT),
        "unknown-output": (extra_filter, grpc.StatusCode.INVALID_ARGUMENT),
        "truncated-content": (bad_content, grpc.StatusCode.INVALID_ARGUMENT),
        # Refused from the shape alone, before anything is allocated:
        "huge-image": (claimed(1, 8000, 8000, 3), grpc.StatusCode.INVALID_ARGUMENT),
        "absurd-batch": (claimed(2**62, 4, 1, 3), grpc.StatusCode.INVALID_ARGUMENT),
        "empty-batch": (
            claimed(0, TINY_SIZE, TINY_SIZE, 3),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        # One value broadcast to 1.5 GB: more than the message cap could ever carry packed.
        "broadcast-bomb": (
            claimed(100_000, TINY_SIZE, TINY_SIZE, 3, values=[7]),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
    }


@pytest.mark.parametrize("case", list(bad_predict_requests()))
def test_predict_error_codes(stub, case):
    request, code = bad_predict_requests()[case]
    with pytest.raises(grpc.RpcError) as info:
        stub.Predict(request, timeout=30)
    assert info.value.code() == code, info.value.details()
    assert info.value.details()  # a reason, never an empty message


@pytest.mark.parametrize(
    "request_, code",
    [
        (metadata_request("signature_def", name="teapot"), grpc.StatusCode.NOT_FOUND),
        (metadata_request(), grpc.StatusCode.INVALID_ARGUMENT),
        (metadata_request("signature_def", "lineage"), grpc.StatusCode.INVALID_ARGUMENT),
    ],
    ids=["unknown-model", "no-field", "unsupported-field"],
)
def test_metadata_error_codes(stub, request_, code):
    with pytest.raises(grpc.RpcError) as info:
        stub.GetModelMetadata(request_, timeout=30)
    assert info.value.code() == code


def test_client_strings_are_not_echoed_back_whole(stub):
    with pytest.raises(grpc.RpcError) as info:
        stub.GetModelMetadata(metadata_request("signature_def", "x" * 1_000_000), timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert len(info.value.details()) < 1000


def test_client_maps_server_errors(server):
    with ServingClient(server.target, model_name="teapot", timeout=30) as client:
        ok, reason = client.check_ready()
        assert not ok and "teapot" in reason
        with pytest.raises(ModelServerUnavailable) as info:  # NOT_FOUND for Latest(model)
            client.metadata()
        assert info.value.code == grpc.StatusCode.NOT_FOUND
    with ServingClient(server.target, timeout=30) as client:
        with pytest.raises(ModelServerError) as info:
            client.predict(images(1), version=99)
        assert not isinstance(info.value, ModelServerUnavailable)
        assert info.value.code == grpc.StatusCode.NOT_FOUND


def test_concurrent_requests_are_batched(server):
    before = server.stats()["stats"]
    barrier = threading.Barrier(12)
    versions = []

    def call(seed):
        with ServingClient(server.target, timeout=60) as client:
            client.metadata()
            barrier.wait()
            versions.append(client.predict(images(1, seed=seed)).version)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert len(versions) == 12
    stats = server.wait_stats(lambda s: s["stats"]["requests"] >= before["requests"] + 12)["stats"]
    batches = stats["batches"] - before["batches"]
    assert batches < 12, f"12 concurrent requests ran in {batches} batches: {stats}"
    assert stats["max_requests_in_a_batch"] >= 2


def test_new_versions_are_picked_up_and_broken_ones_skipped(server, base):
    grpc_target = server.target
    with ServingClient(grpc_target, timeout=30) as client:
        assert client.predict(images(1)).version == 1

        copy_version(base / "1", base, 2)  # "export" version 2 while serving
        server.wait_stats(lambda s: s["serving_versions"] == [1, 2])
        assert client.predict(images(1)).version == 2
        assert client.metadata().version == 2  # the cache was refreshed
        assert client.predict(images(1), version=1).version == 1  # version_choice

        broken = base / ".3-staging"
        broken.mkdir()
        (broken / "saved_model.pb").write_bytes(b"this is not a SavedModel")
        broken.rename(base / "3")
        stats = server.wait_stats(lambda s: "3" in s["failed_versions"])
        assert stats["serving_versions"] == [1, 2]
        assert "saved_model.pb" in stats["failed_versions"]["3"]
        assert client.predict(images(1)).version == 2  # the last good one keeps serving
        assert health_status(grpc_target, "kitchenware") == SERVING
        assert "version 3 of kitchenware NOT loaded" in server.log()

    # The official ModelService reports the failure too (server side has TensorFlow).
    with grpc.insecure_channel(grpc_target) as channel:
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = "kitchenware"
        response = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(
            request, timeout=30
        )
    states = {s.version: s for s in response.model_version_status}
    assert states[2].state == get_model_status_pb2.ModelVersionStatus.AVAILABLE
    assert states[3].state == get_model_status_pb2.ModelVersionStatus.END
    assert "saved_model.pb" in states[3].status.error_message


def test_a_broken_first_version_is_retried_then_the_server_exits(tmp_path, backend):
    base = tmp_path / "kitchenware"
    (base / "1").mkdir(parents=True)
    (base / "1" / "saved_model.pb").write_bytes(b"this is not a SavedModel")
    retries = ["--max-num-load-retries", "2", "--load-retry-interval-seconds", "0.3"]
    server = ModelServer(base, tmp_path, extra=retries, backend=backend)
    server.start()
    try:
        code = server.proc.wait(120)
        log = server.log()
        assert code == 1, log
        assert log.count("loading kitchenware version 1") == 3  # the first load + 2 retries
        assert "giving up: version 1 of kitchenware failed 3 load(s)" in log
        assert "saved_model.pb" in log  # the reason is in the last line
        assert "listening" not in log  # no port was ever opened
    finally:
        server.kill()


def test_a_first_version_fixed_during_the_retries_serves(exported_model, tmp_path, backend):
    base = tmp_path / "kitchenware"
    broken = tmp_path / "broken"
    shutil.copytree(exported_model / "1", broken)
    (broken / "saved_model.pb").write_bytes(b"this is not a SavedModel")
    base.mkdir()
    os.rename(broken, base / "1")
    retries = ["--max-num-load-retries", "100", "--load-retry-interval-seconds", "0.5"]
    server = ModelServer(base, tmp_path, extra=retries, backend=backend)
    server.start()
    try:
        wait_for(lambda: "retrying version 1" in server.log(), 90, "a retry")
        assert server.ports_closed()
        # Same mtime second is possible: the retry must not depend on the mtime changing.
        mtime = (base / "1" / "saved_model.pb").stat().st_mtime
        shutil.copy(exported_model / "1" / "saved_model.pb", base / "1" / "saved_model.pb")
        os.utime(base / "1" / "saved_model.pb", (mtime, mtime))
        server.wait_ready(90)
        with ServingClient(server.target, timeout=30) as client:
            assert client.predict(images(1)).version == 1
    finally:
        server.kill()


def test_no_version_then_first_version_arrives(exported_model, tmp_path, backend):
    empty = tmp_path / "kitchenware"
    server = ModelServer(empty, tmp_path, extra=["--batch-timeout-ms", "1500"], backend=backend)
    server.start().wait_polling()
    try:
        # Like TF Serving: no port is open before a version is AVAILABLE.
        time.sleep(1.5)  # several polls of the empty folder
        assert server.alive() and server.ports_closed()
        with ServingClient(server.target, timeout=5) as client:
            ready, reason = client.check_ready()
            assert not ready
            with pytest.raises(ModelServerUnavailable):
                client.predict(images(1))

            copy_version(exported_model / "1", empty, 1)
            # Waits as production's probe does (REST model status AVAILABLE): the
            # tensorflow/serving image has no gRPC health service to wait on.
            server.wait_ready(90)
            assert health_status(server.target, "kitchenware") == SERVING  # ours has one
            # The refused connections put the channel in reconnect backoff (at most 2 s).
            wait_for(lambda: client.check_ready()[0], 15, "the client to reconnect")
            assert client.predict(images(1)).version == 1

            # Deadline shorter than the batch timeout: the client gives up in time.
            with pytest.raises(ModelServerTimeout):
                client.predict(images(1), timeout=0.3)

            # SIGTERM while requests wait in the batch queue: they still get answers.
            server.wait_stats(lambda s: s["stats"]["in_flight"] == 0)  # the timed-out one is done
            results = []
            workers = [
                threading.Thread(target=lambda: results.append(client.predict(images(2))))
                for _ in range(3)
            ]
            for worker in workers:
                worker.start()
            # Accepted and waiting in the batch queue (a batch waits 1.5 s for company).
            server.wait_stats(lambda s: s["stats"]["in_flight"] >= 3, timeout=30)
            assert server.stop() == 0
            for worker in workers:
                worker.join(30)
            assert [r.probabilities.shape for r in results] == [(2, 6)] * 3
            assert "received SIGTERM" in server.log()
            # The three ran as one batch, after SIGTERM.
            assert server.stats()["stats"]["requests_per_batch"].get("3") == 1
    finally:
        server.kill()


def test_client_survives_a_server_restart(exported_model, tmp_path, backend):
    base = tmp_path / "kitchenware"
    copy_version(exported_model / "1", base, 1)
    server = ModelServer(base, tmp_path, batching=False, backend=backend).start(wait=True)
    try:
        client = ServingClient(server.target, timeout=3)
        assert client.predict(images(1)).version == 1
        server.kill()
        started = time.monotonic()
        with pytest.raises(ModelServerUnavailable):
            client.predict(images(1))
        assert time.monotonic() - started < 3 + 2  # within the deadline (plus slack)
        assert not client.check_ready()[0]

        server.start(wait=True)  # same port; the same client (same channel) reconnects
        # The port opens only once the version is loaded, and the channel retries a
        # refused connection after its reconnect backoff (at most 2 s): wait that long.
        wait_for(lambda: client.check_ready()[0], 15, "the client to reconnect")
        assert client.predict(images(1)).version == 1
        client.close()
    finally:
        server.kill()


def test_cli_validates_the_batching_file_and_flags(tmp_path):
    good = tmp_path / "batching.config"
    good.write_text("max_batch_size { value: 16 }\nbatch_timeout_micros { value: 2000 }\n")
    bad = tmp_path / "bad.config"
    bad.write_text("max_batch_size { value: 16 }\nbatch_size { value: 2 }\n")

    def cli(*args):
        return subprocess.run(
            [sys.executable, "-m", "kitchenware.cli", "model-server", *args],
            capture_output=True, text=True, cwd=REPO, timeout=60,
        )  # fmt: skip

    ok = cli("--batching_parameters_file", str(good), "--check-config")
    assert ok.returncode == 0 and '"max_batch_size": 16' in ok.stdout
    refused = cli("--batching-parameters-file", str(bad), "--check-config")
    assert refused.returncode == 2 and 'no field named "batch_size"' in refused.stderr
    assert "Traceback" not in refused.stderr
    assert cli("--port", "0", "--check-config").returncode == 2
    negative = cli("--max-num-load-retries", "-1", "--check-config")
    assert negative.returncode == 2
    assert "argument --max-num-load-retries/--max_num_load_retries: '-1' is not valid: " in (
        negative.stderr
    )
    assert "must be at least 0" in negative.stderr
    negative = cli("--load-retry-interval-seconds", "-1", "--check-config")
    assert negative.returncode == 2 and "--load-retry-interval-seconds: '-1' is not valid" in (
        negative.stderr
    )
    # TF Serving's spelling of the retry flag works too.
    assert cli("--max_num_load_retries", "0", "--check-config").returncode == 0
