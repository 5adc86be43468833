"""The serving image's TensorFlow loads what our TensorFlow exports, and answers the same.

The version comes from image-model.dockerfile (ARG TF_SERVING_VERSION), the one
place it is written; devtools.skew installs it into a cached venv.
"""

from __future__ import annotations

import shutil

import pytest

from devtools.skew import SkewError, check, runtime, serving_version
from kitchenware.core.contract import WARMUP_FILE


@pytest.fixture(scope="module")
def serving_python():
    version = serving_version()
    try:
        return runtime(version)
    except SkewError as exc:  # no package registry: nothing to compare with
        pytest.skip(f"tensorflow-cpu=={version} cannot be installed here: {exc}")


@pytest.mark.slow
def test_the_serving_tensorflow_answers_the_warmup_like_the_exporting_one(
    serving_python, exported_model
):
    # The export carries an OpenVINO IR in <version>/openvino/: the older TensorFlow
    # loads the folder regardless (TF Serving reads only the SavedModel's own files).
    assert (exported_model / "1" / "openvino" / "manifest.json").is_file()
    result = check(exported_model)
    assert result["serving"] == serving_version()
    assert result["export"] != result["serving"]  # the check compares two runtimes
    assert result["max_difference"] <= 1e-4
    # Both warm-up records replayed: the Grad-CAM maps load and agree under TF Serving's TF too.
    assert result["signatures"] == ["explain", "serving_default"]
    assert {"explain/heatmap", "explain/heatmaps", "serving_default/probabilities"} <= set(
        result["differences"]
    )


@pytest.mark.slow
def test_a_version_the_serving_tensorflow_cannot_read_fails_the_check(
    serving_python, exported_model, tmp_path
):
    base = tmp_path / "kitchenware"
    shutil.copytree(exported_model, base)
    without_warmup = shutil.copytree(base / "1", base / "2")
    (without_warmup / WARMUP_FILE).unlink()
    with pytest.raises(SkewError, match="no warm-up request"):
        check(base, version=2)
    broken = shutil.copytree(base / "1", base / "3")
    (broken / "saved_model.pb").write_bytes(b"not a SavedModel")
    with pytest.raises(SkewError, match="could not run"):
        check(base, version=3)
