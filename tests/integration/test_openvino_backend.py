"""The OpenVINO backend's own rules: IR per signature (or shared with another), auto's
choice, the self-test, no TensorFlow in its environment, and no usage statistics sent by
the export.

Everything a client sees is tested once per backend in the model-server suites
(test_model_server*.py, test_warmup.py); these cases cover what only this backend has.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys

import numpy as np
import pytest
from support.paths import REPO, TINY_SIZE

from devtools.stack import MODEL_VENV_PYTHON
from kitchenware.core.contract import (
    EXPLAIN_SIGNATURE,
    OPENVINO_DIR,
    OPENVINO_MANIFEST,
    SIGNATURE,
)
from kitchenware.export.inspection import format_inspection, inspect
from kitchenware.model_server.servables import LoadedVersion, LoadError

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def two_signatures(tmp_path_factory):
    """A version with serving_default and a second signature OpenVINO cannot convert
    (a tf.py_function), exported the way `kitchenware export` writes IR."""
    import tensorflow as tf

    from kitchenware.export.openvino_ir import write_ir
    from kitchenware.export.savedmodel import serving_function, write_warmup
    from kitchenware.training.model import build_model, inference_model

    model = inference_model(
        build_model(size=TINY_SIZE, weights="none", inner=8, augment=False, seed=2)
    )
    spec = tf.TensorSpec([None, TINY_SIZE, TINY_SIZE, 3], tf.uint8, name="image")

    @tf.function(input_signature=[spec])
    def opaque(image):
        mean = tf.py_function(lambda x: tf.reduce_mean(tf.cast(x, tf.float32)), [image], tf.float32)
        return {"brightness": tf.reshape(mean, [1])}

    module = tf.Module()
    module.model = model
    module.serve = serving_function(model)
    module.opaque = opaque
    version = tmp_path_factory.mktemp("two") / "kitchenware" / "1"
    tf.saved_model.save(
        module, str(version), signatures={SIGNATURE: module.serve, "opaque": opaque}
    )
    write_warmup(version, TINY_SIZE, signatures=(SIGNATURE,))
    manifest = write_ir(version)
    return version, manifest


def varied_images() -> np.ndarray:
    images = np.random.default_rng(7).integers(0, 256, (4, TINY_SIZE, TINY_SIZE, 3), np.uint8)
    images[:, :, : TINY_SIZE // 2] //= 3  # a dark left half: the mirror is another picture
    return images


@pytest.fixture(scope="module")
def peaky_model():
    """A tiny real model with different, confident answers for varied_images() (and an
    image and its mirror). An untrained Xception's pooled features differ between images
    by ~1e-6 and by how much depends on what the process built before, so the logits
    layer is fitted to them: random directions, scaled to a spread of ~3 per class
    across those images, centred by the bias."""
    from kitchenware.training.model import build_model

    model = build_model(size=TINY_SIZE, weights="none", inner=0, dropout=0.0, augment=False, seed=5)
    logits = model.get_layer("logits")
    kernel, bias = logits.get_weights()
    kernel = np.random.default_rng(0).normal(0, 1, kernel.shape)
    logits.set_weights([kernel.astype("float32"), np.zeros_like(bias)])
    images = varied_images()
    both = np.concatenate([images, images[:, :, ::-1]])
    scale = 3 / np.asarray(model(both, training=False), dtype=np.float64).std(axis=0).mean()
    logits.set_weights([(kernel * scale).astype("float32"), np.zeros_like(bias)])
    centre = np.asarray(model(both, training=False), dtype=np.float64).mean(axis=0)
    logits.set_weights([(kernel * scale).astype("float32"), (-centre).astype("float32")])
    return model


def assert_serves_like_tensorflow(version, monkeypatch) -> None:
    """Both signatures on OpenVINO in f32 give TensorFlow's answers (classes: the same)."""
    import tensorflow as tf

    from kitchenware.export.openvino_ir import SHARE_ATOL
    from kitchenware.model_server.openvino_runtime import PRECISION_ENV

    images = varied_images()
    monkeypatch.setenv(PRECISION_ENV, "f32")
    model = LoadedVersion(version, 1, backend="openvino")
    try:
        assert model.backend == "openvino" and model.backend_detail["precision"] == "f32"
        got = {
            k: model.signatures[k].run({"image": images}) for k in (SIGNATURE, EXPLAIN_SIGNATURE)
        }
    finally:
        model.close()
    loaded = tf.saved_model.load(str(version))
    for name, outputs in got.items():
        want = {k: v.numpy() for k, v in loaded.signatures[name](image=tf.constant(images)).items()}
        assert sorted(outputs) == sorted(want), name
        assert outputs["classes"].tolist() == want["classes"].tolist()
        for key in sorted(set(want) - {"classes"}):
            assert outputs[key].dtype == want[key].dtype, (name, key)
            np.testing.assert_allclose(outputs[key], want[key], atol=SHARE_ATOL, err_msg=name)
    # not the same answer for every image: the comparison above can tell models apart
    assert np.ptp(got[SIGNATURE]["probabilities"], axis=0).max() > 0.1


def test_a_normal_export_has_one_ir_that_serving_default_shares(exported_model):
    """explain's IR (all its numeric outputs) is the only one; serving_default runs on its
    `probabilities`, and keeps its own self-test (TensorFlow's answer for it)."""
    folder = exported_model / "1" / OPENVINO_DIR
    assert sorted(p.name for p in folder.iterdir()) == [
        "explain.bin",
        "explain.xml",
        OPENVINO_MANIFEST,
    ]
    manifest = json.loads((folder / OPENVINO_MANIFEST).read_text())
    explain, serving = (manifest["signatures"][k] for k in (EXPLAIN_SIGNATURE, SIGNATURE))
    assert explain["xml"] == "explain.xml" and "shares" not in explain
    assert explain["outputs"] == ["heatmap", "heatmaps", "probabilities"]
    assert serving["shares"] == EXPLAIN_SIGNATURE and serving["xml"] == "explain.xml"
    assert serving["outputs"] == ["probabilities"] and serving["ir_outputs"] == [2]
    assert sorted(serving["self_test"]["expected"]) == ["probabilities"]
    assert serving["constant_rows"] == explain["constant_rows"]


def test_a_shared_ir_serves_both_signatures_like_tensorflow(peaky_model, tmp_path, monkeypatch):
    from kitchenware.export.savedmodel import export_saved_model

    version = export_saved_model(peaky_model, tmp_path / "kitchenware", 1)
    manifest = json.loads((version / OPENVINO_DIR / OPENVINO_MANIFEST).read_text())
    assert manifest["signatures"][SIGNATURE]["shares"] == EXPLAIN_SIGNATURE
    assert [p.name for p in (version / OPENVINO_DIR).glob("*.bin")] == ["explain.bin"]
    assert_serves_like_tensorflow(version, monkeypatch)


def test_a_signature_that_answers_otherwise_gets_its_own_ir(
    peaky_model, tmp_path, caplog, monkeypatch
):
    """Same input and output names, other probabilities: serving_default serves TTA's mean
    over image and mirror, explain the image alone. The share check sees it (on the noise
    image: the grey one is its own mirror) and converts serving_default on its own, which
    is also the layout every manifest from before sharing has: it loads and serves."""
    import tensorflow as tf

    from kitchenware.export.openvino_ir import write_ir
    from kitchenware.export.savedmodel import explain_function, serving_function, write_warmup

    module = tf.Module()
    module.model = peaky_model
    module.serve = serving_function(peaky_model, tta="flip")
    module.explain = explain_function(peaky_model, tta="none")
    version = tmp_path / "kitchenware" / "1"
    tf.saved_model.save(
        module,
        str(version),
        signatures={SIGNATURE: module.serve, EXPLAIN_SIGNATURE: module.explain},
    )
    write_warmup(version, TINY_SIZE)
    with caplog.at_level(logging.INFO, logger="kitchenware.export"):
        manifest = write_ir(version)
    assert sorted(manifest["signatures"]) == [EXPLAIN_SIGNATURE, SIGNATURE]
    assert manifest["not_converted"] == {}
    serving = manifest["signatures"][SIGNATURE]
    assert serving["xml"] == "serving_default.xml"
    assert "shares" not in serving and "ir_outputs" not in serving
    bins = sorted(p.name for p in (version / OPENVINO_DIR).glob("*.bin"))
    assert bins == ["explain.bin", "serving_default.bin"]
    assert "'serving_default' cannot share 'explain'" in caplog.text
    assert "probabilities from 'explain''s IR differs from its own" in caplog.text
    (found,) = inspect(version)
    assert found["openvino"]["shares"] == {}
    assert "shares the IR" not in format_inspection([found])
    assert_serves_like_tensorflow(version, monkeypatch)


def test_a_signature_that_fails_to_convert_is_reported_and_the_rest_convert(two_signatures):
    version, manifest = two_signatures
    assert sorted(manifest["signatures"]) == [SIGNATURE]
    assert "opaque" in manifest["not_converted"] and manifest["not_converted"]["opaque"]
    (found,) = inspect(version)
    assert found["openvino"]["signatures"] == [SIGNATURE]
    text = format_inspection([found])
    assert "OpenVINO IR: serving_default" in text and "no IR for 'opaque'" in text


def test_auto_chooses_tensorflow_when_a_signature_lacks_ir(two_signatures):
    version, _ = two_signatures
    model = LoadedVersion(version, 1, backend="auto")
    try:
        assert model.backend == "tensorflow"
        assert "opaque" in model.backend_detail["why_not_openvino"]
        assert sorted(model.signatures) == ["opaque", SIGNATURE]
    finally:
        model.close()


def test_openvino_serves_the_signatures_with_ir_only(two_signatures):
    version, _ = two_signatures
    model = LoadedVersion(version, 1, backend="openvino")
    try:
        assert model.backend == "openvino"
        # Not served: a request for it gets TF Serving's unknown-signature answer
        # (services.PredictionService._signature_of); the metadata still lists it.
        assert sorted(model.signatures) == [SIGNATURE]
        assert "opaque" in model.signature_defs
        assert model.backend_detail["signatures_without_ir"] == ["opaque"]
        pixels = np.random.default_rng(0).integers(0, 256, (3, TINY_SIZE, TINY_SIZE, 3), np.uint8)
        out = model.signatures[SIGNATURE].run({"image": pixels})
        assert out["probabilities"].shape == (3, 6) and out["probabilities"].dtype == np.float32
        assert out["classes"].shape == (3, 6) and out["classes"][2, 0] == b"cup"
    finally:
        model.close()


def test_a_failed_self_test_refuses_openvino_and_auto_falls_back(exported_model, tmp_path):
    version = shutil.copytree(exported_model / "1", tmp_path / "kitchenware" / "1")
    path = version / OPENVINO_DIR / OPENVINO_MANIFEST
    manifest = json.loads(path.read_text())
    expected = manifest["signatures"][SIGNATURE]["self_test"]["expected"]
    expected["probabilities"] = [[1.0, 0, 0, 0, 0, 0]]  # not what the model answers
    path.write_text(json.dumps(manifest))
    with pytest.raises(LoadError, match="self-test of 'serving_default' failed"):
        LoadedVersion(version, 1, backend="openvino")
    model = LoadedVersion(version, 1, backend="auto")
    try:
        assert model.backend == "tensorflow"
        assert "self-test" in model.backend_detail["why_not_openvino"]
    finally:
        model.close()


def test_the_self_test_checks_explain_maps_by_shape_and_range_and_its_probabilities_by_value(
    exported_model, tmp_path
):
    """bf16 rounding on a grey image's near-flat maps is magnified without bound by the
    per-map normalisation, so the maps' values are not compared; the probabilities are."""
    version = shutil.copytree(exported_model / "1", tmp_path / "kitchenware" / "1")
    path = version / OPENVINO_DIR / OPENVINO_MANIFEST
    manifest = json.loads(path.read_text())
    expected = manifest["signatures"][EXPLAIN_SIGNATURE]["self_test"]["expected"]
    original = np.asarray(expected["heatmap"])
    expected["heatmap"] = (1.0 - original).tolist()
    path.write_text(json.dumps(manifest))
    LoadedVersion(version, 1, backend="openvino").close()  # maps: shape and range only
    expected["heatmap"] = original[..., :1].tolist()
    path.write_text(json.dumps(manifest))
    with pytest.raises(LoadError, match="self-test of 'explain' failed: heatmap has another shape"):
        LoadedVersion(version, 1, backend="openvino")
    expected["heatmap"] = original.tolist()
    expected["probabilities"] = [[1.0, 0, 0, 0, 0, 0]]
    path.write_text(json.dumps(manifest))
    with pytest.raises(LoadError, match="self-test of 'explain' failed: probabilities differs"):
        LoadedVersion(version, 1, backend="openvino")


def test_openvino_serves_explain_like_tensorflow_within_bf16(exported_model):
    """explain's IR: TF's probabilities (bf16 tolerance), maps in [0, 1], the top map is the
    top class's of the six, classes filled from the manifest."""
    import tensorflow as tf

    images = np.random.default_rng(5).integers(0, 256, (3, TINY_SIZE, TINY_SIZE, 3), np.uint8)
    model = LoadedVersion(exported_model / "1", 1, backend="openvino")
    try:
        assert model.backend == "openvino"
        got = model.signatures[EXPLAIN_SIGNATURE].run({"image": images})
    finally:
        model.close()
    want = tf.saved_model.load(str(exported_model / "1")).signatures[EXPLAIN_SIGNATURE](
        image=tf.constant(images)
    )
    np.testing.assert_allclose(got["probabilities"], want["probabilities"].numpy(), atol=0.02)
    assert got["heatmaps"].shape == want["heatmaps"].shape
    assert got["heatmap"].shape == want["heatmap"].shape
    assert np.all((got["heatmaps"] >= 0) & (got["heatmaps"] <= 1 + 1e-3))
    top = np.argmax(got["probabilities"], axis=-1)
    np.testing.assert_allclose(got["heatmap"], got["heatmaps"][np.arange(3), top], atol=1e-6)
    assert got["classes"].tolist() == want["classes"].numpy().tolist()


def test_a_version_without_ir_does_not_load_on_openvino(exported_model, tmp_path):
    version = shutil.copytree(exported_model / "1", tmp_path / "kitchenware" / "1")
    shutil.rmtree(version / OPENVINO_DIR)
    with pytest.raises(LoadError, match="carries no OpenVINO IR"):
        LoadedVersion(version, 1, backend="openvino")


def test_the_openvino_server_environment_has_no_tensorflow():
    """The model-server suites run every --backend openvino server in .venv-model
    (devtools.stack.model_server_python): TensorFlow is not even installed there."""
    if not MODEL_VENV_PYTHON.is_file():
        pytest.skip("no .venv-model (make model-venv)")
    probe = (
        "import importlib.util, sys\n"
        "import kitchenware.model_server.cli, kitchenware.model_server.services\n"
        "from kitchenware.model_server import backends, openvino_runtime\n"
        "import openvino\n"
        "assert importlib.util.find_spec('tensorflow.python') is None, 'TensorFlow is installed'\n"
        # Not installed (OpenVINO then uses its no-op stub): nothing there can phone home.
        "assert importlib.util.find_spec('openvino_telemetry') is None, 'telemetry installed'\n"
        "assert 'openvino_telemetry' not in sys.modules\n"
        "print('ok')\n"
    )
    result = subprocess.run(
        [str(MODEL_VENV_PYTHON), "-c", probe], capture_output=True, text=True, cwd=REPO
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


# Records every attempt to reach a non-loopback address (name lookups included) in a
# file and refuses it, then runs the export's IR conversion. The file, not memory: the
# telemetry library sends from a forked child process, which inherits the audit hook.
_RECORD_AND_CONVERT = r"""
import ipaddress, json, os, socket, sys
version, record = sys.argv[1:3]
def loopback(host):
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError:
        return str(host) == "localhost"
def note(text):
    with open(record, "a") as out:
        out.write(f"{os.getpid()} {text}\n")
    raise PermissionError("blocked: loopback only")
def hook(event, args):
    if event == "socket.connect" and isinstance(args[1], tuple) and not loopback(args[1][0]):
        note(f"connect {args[1]!r}")
    if event == "socket.getaddrinfo" and args[0] and not loopback(args[0]):
        note(f"getaddrinfo {args[0]!r}")
sys.addaudithook(hook)
from kitchenware.export.openvino_ir import write_ir
manifest = write_ir(version)
import time; time.sleep(3)  # a sender would have tried by now (it times out after 1-2 s)
print(json.dumps(sorted(manifest["signatures"])))
"""


def convert_recording_attempts(exported_model, tmp_path, prelude: str = "") -> list[str]:
    """Convert a copy of the export's version in a fresh process (fresh HOME, so no
    earlier consent file decides); returns the recorded outbound attempts."""
    version = shutil.copytree(exported_model / "1", tmp_path / "kitchenware" / "1")
    shutil.rmtree(version / OPENVINO_DIR)
    record = tmp_path / "attempts.txt"
    record.touch()
    home = tmp_path / "home"
    home.mkdir()
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "TF_CPP_MIN_LOG_LEVEL": "2",
           "PYTHONPATH": str(REPO)}  # fmt: skip
    script = _RECORD_AND_CONVERT.replace("from kitchenware", prelude + "from kitchenware", 1)
    result = subprocess.run(
        [sys.executable, "-c", script, str(version), str(record)],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == [EXPLAIN_SIGNATURE, SIGNATURE]
    return record.read_text().splitlines()


def test_the_export_sends_no_usage_statistics(exported_model, tmp_path):
    assert convert_recording_attempts(exported_model, tmp_path) == []


def test_the_recorder_sees_the_converters_statistics_when_not_turned_off(exported_model, tmp_path):
    """Without the export's opt-out the same conversion does try to send: the check above
    would see it."""
    prelude = "import kitchenware.export.openvino_ir as ir; ir.telemetry_off = lambda: None\n"
    attempts = convert_recording_attempts(exported_model, tmp_path, prelude)
    assert attempts and all("getaddrinfo" in a or "connect" in a for a in attempts), attempts


def test_the_inference_precision_comes_from_the_environment(exported_model, monkeypatch):
    from kitchenware.model_server.openvino_runtime import PRECISION_ENV

    monkeypatch.setenv(PRECISION_ENV, "f32")
    model = LoadedVersion(exported_model / "1", 1, backend="openvino")
    try:
        assert model.backend_detail["precision"] == "f32"
    finally:
        model.close()
    monkeypatch.setenv(PRECISION_ENV, "fp8")
    with pytest.raises(
        LoadError, match=f"{PRECISION_ENV}='fp8' is not valid: must be one of auto, f32, bf16"
    ):
        LoadedVersion(exported_model / "1", 1, backend="openvino")
