"""Load an export with the TensorFlow version the serving image runs, and compare answers.

Models are exported by the TensorFlow in our pins and served by
`tensorflow/serving:<TF_SERVING_VERSION>` (image-model.dockerfile's ARG, the one
place that version is written). TensorFlow does not promise that an older
runtime reads a newer SavedModel, so this check installs that version into a
throw-away virtual environment (cached), loads the version folder there, replays
every warm-up record of the export (one per signature: `serving_default` and
`explain`) through the signature it names, and compares every float output
(probabilities, Grad-CAM maps) with what the exporting TensorFlow computes.

    python -m devtools.skew models/kitchenware [--version N]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import venv
from pathlib import Path

from kitchenware.core.contract import SIGNATURE, WARMUP_FILE, versions
from kitchenware.core.errors import KitchenwareError
from kitchenware.training.weights import default_cache_dir

REPO = Path(__file__).resolve().parents[1]
MODEL_DOCKERFILE = REPO / "image-model.dockerfile"
TOLERANCE = 1e-4

# Runs inside the old TensorFlow: each warm-up request through the signature it names
# (TF Serving's rule: an empty name means serving_default); float outputs come back.
_REPLAY = r"""
import json, sys
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2
folder, warmup, default = sys.argv[1:4]
signatures = tf.saved_model.load(folder).signatures
answers = {}
for record in tf.data.TFRecordDataset(warmup):
    request = prediction_log_pb2.PredictionLog.FromString(record.numpy()).predict_log.request
    name = request.model_spec.signature_name or default
    inputs = {k: tf.constant(tf.make_ndarray(t)) for k, t in request.inputs.items()}
    outputs = signatures[name](**inputs)
    answers[name] = {k: v.numpy().tolist() for k, v in outputs.items() if v.dtype.is_floating}
print(json.dumps({"tensorflow": tf.__version__, "answers": answers}))
"""


class SkewError(KitchenwareError):
    """The serving TensorFlow cannot load or run the export, or answers differently."""


def serving_version(dockerfile: Path = MODEL_DOCKERFILE) -> str:
    """TF_SERVING_VERSION as image-model.dockerfile declares it."""
    found = re.search(r"^ARG TF_SERVING_VERSION=(\S+)$", dockerfile.read_text(), re.M)
    if not found:
        raise SkewError(f"{dockerfile} declares no ARG TF_SERVING_VERSION=...")
    return found.group(1)


def runtime(version: str, cache: Path | None = None) -> Path:
    """The python of a cached venv holding tensorflow-cpu==version (made on first use)."""
    folder = (cache or default_cache_dir()) / f"tensorflow-{version}-venv"
    python = folder / "bin" / "python"
    if (folder / ".complete").is_file():
        return python
    venv.create(folder, with_pip=True, clear=True)
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    for args in (
        [f"tensorflow-cpu=={version}"],
        ["--no-deps", f"tensorflow-serving-api=={version}"],
    ):
        done = subprocess.run(pip + args, capture_output=True, text=True)
        if done.returncode != 0:
            raise SkewError(f"cannot install {' '.join(args)}: {done.stderr.strip()[-800:]}")
    (folder / ".complete").touch()
    return python


def replay(python: Path, folder: Path) -> dict:
    """Run the warm-up request of version folder `folder` under `python`."""
    done = subprocess.run(
        [str(python), "-c", _REPLAY, str(folder), str(folder / WARMUP_FILE), SIGNATURE],
        capture_output=True, text=True, timeout=600,
        env={"PATH": "/usr/bin:/bin", "TF_CPP_MIN_LOG_LEVEL": "2"},
    )  # fmt: skip
    if done.returncode != 0:
        raise SkewError(f"{python} could not run {folder}: {done.stderr.strip()[-1500:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def check(base: Path, version: int | None = None, tf_version: str | None = None) -> dict:
    """Both TensorFlows on the export's warm-up requests; raises SkewError when they differ.

    The result's `signatures` lists what was replayed; `max_difference` is over
    every float output of every signature.
    """
    import numpy as np

    available = versions(base)
    if not available:
        raise SkewError(f"{base} holds no SavedModel versions")
    folder = Path(base) / str(version or available[-1])
    if not (folder / WARMUP_FILE).is_file():
        raise SkewError(f"{folder} has no warm-up request ({WARMUP_FILE})")
    tf_version = tf_version or serving_version()
    old = replay(runtime(tf_version), folder)
    new = replay(Path(sys.executable), folder)
    if sorted(old["answers"]) != sorted(new["answers"]):
        raise SkewError(
            f"TensorFlow {old['tensorflow']} replayed {sorted(old['answers'])}, "
            f"the exporting one {sorted(new['answers'])}"
        )
    differences = {}
    for signature, outputs in new["answers"].items():
        for name, values in outputs.items():
            theirs = np.asarray(old["answers"][signature].get(name, np.nan))
            mine = np.asarray(values)
            if theirs.shape != mine.shape:
                raise SkewError(
                    f"{signature}/{name}: shape {list(theirs.shape)} under TensorFlow "
                    f"{old['tensorflow']}, {list(mine.shape)} under {new['tensorflow']}"
                )
            differences[f"{signature}/{name}"] = float(np.max(np.abs(theirs - mine)))
    difference = max(differences.values(), default=0.0)
    result = {"folder": str(folder), "serving": old["tensorflow"], "export": new["tensorflow"],
              "signatures": sorted(new["answers"]), "differences": differences,
              "max_difference": difference}  # fmt: skip
    if difference > TOLERANCE:
        raise SkewError(f"TensorFlow {old['tensorflow']} answers differently: {result}")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base", type=Path, help="model base path (TF Serving layout)")
    parser.add_argument("--version", type=int, default=None, help="version folder (latest)")
    parser.add_argument(
        "--tf-version", default=None, help="TensorFlow to load with (image-model.dockerfile's)"
    )
    args = parser.parse_args(argv)
    try:
        result = check(args.base, args.version, args.tf_version)
    except KitchenwareError as exc:
        print(f"skew check: {exc}", file=sys.stderr)
        return 1
    print(
        f"{result['folder']}: exported by TensorFlow {result['export']}, loads and answers the "
        f"same under {result['serving']} (signatures {', '.join(result['signatures'])}; "
        f"max difference {result['max_difference']:.2e})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
