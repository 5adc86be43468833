"""The runtimes a version can be served on: TensorFlow (the SavedModel) or OpenVINO (its IR).

`--backend tensorflow` loads the SavedModel as TF Serving does. `--backend openvino`
runs the IR that `kitchenware export` wrote into the version folder and never
imports TensorFlow; a signature without IR is then not served (a request for it
gets TF Serving's answer for an unknown signature key), and a version whose
`serving_default` has no IR, or whose IR fails its self-test, fails to load like
any broken version. `--backend auto` uses OpenVINO when the version carries IR for
every signature and the self-test passes, else TensorFlow.

Each backend gives, per signature, a function taking and returning NumPy arrays
keyed by the signature's aliases, so everything above (batching, warm-up,
the gRPC and REST APIs) is the same for both.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger("kitchenware.model_server")

BACKENDS = ("auto", "tensorflow", "openvino")
# Signatures TF writes for itself; not part of the serving contract.
INTERNAL_SIGNATURES = ("__saved_model_init_op",)


class LoadError(Exception):
    """A version folder that cannot be served (the message says why)."""


Function = Callable[..., dict[str, np.ndarray]]


@dataclass
class LoadedFunctions:
    name: str  # "tensorflow" or "openvino"
    functions: dict[str, Function]
    detail: dict = field(default_factory=dict)  # for the stats file and the log
    keep: object = None  # the loaded SavedModel / compiled models


def load(path: Path, backend: str, signature_defs) -> LoadedFunctions:
    if backend == "tensorflow":
        return load_tensorflow(path)
    if backend == "openvino":
        return load_openvino(path, signature_defs)
    if backend == "auto":
        try:
            loaded = load_openvino(path, signature_defs, require_all=True)
        except LoadError as exc:
            log.info("%s: serving with TensorFlow, not OpenVINO: %s", path, exc)
            try:
                loaded = load_tensorflow(path)
            except LoadError as tf_exc:
                raise LoadError(f"not on OpenVINO ({exc}), not on TensorFlow ({tf_exc})") from None
            loaded.detail["why_not_openvino"] = str(exc)
        return loaded
    raise LoadError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")


def load_tensorflow(path: Path) -> LoadedFunctions:
    try:
        import tensorflow as tf
    except ImportError as exc:
        raise LoadError(f"TensorFlow is not installed here ({exc})") from None
    try:
        saved = tf.saved_model.load(str(path))
    except Exception as exc:  # TF raises many types for a broken SavedModel
        raise LoadError(f"tf.saved_model.load({path}) failed: {exc}") from None

    def numpy_function(function) -> Function:
        def run(**inputs):
            result = function(**{k: tf.constant(v) for k, v in inputs.items()})
            return {k: v.numpy() for k, v in result.items()}

        return run

    functions = {name: numpy_function(f) for name, f in saved.signatures.items()}
    return LoadedFunctions("tensorflow", functions, {}, saved)


def load_openvino(path: Path, signature_defs, require_all: bool = False) -> LoadedFunctions:
    """The version's IR, compiled and self-tested; `require_all`: every signature must have IR."""
    from kitchenware.model_server.openvino_runtime import (
        OpenVinoUnavailable,
        OpenVinoVersion,
        read_manifest,
    )

    try:
        manifest = read_manifest(path)
    except OpenVinoUnavailable as exc:
        raise LoadError(str(exc)) from None
    if manifest is None:
        raise LoadError(f"{path} carries no OpenVINO IR (export it again with this version)")
    served = [n for n in signature_defs if n not in INTERNAL_SIGNATURES]
    missing = sorted(n for n in served if n not in manifest["signatures"])
    if missing and require_all:
        raise LoadError(f"no OpenVINO IR for signature(s) {missing}")
    try:
        version = OpenVinoVersion(path, manifest)
        version.self_test()
    except OpenVinoUnavailable as exc:
        raise LoadError(f"{path}: {exc}") from None
    detail = version.describe()
    if missing:
        detail["signatures_without_ir"] = missing
        log.warning(
            "%s: signature(s) %s have no OpenVINO IR and are not served by this backend",
            path,
            missing,
        )
    return LoadedFunctions("openvino", dict(version.functions), detail, version)
