"""Model versions for the model server: load, validate, warm up, swap, poll.

Like TF Serving, the server watches `BASE/<version>/` folders, serves the
newest `num_versions` of them and never drops to zero versions: a new version
is loaded and warmed up completely before it replaces the old one, and a
version that fails to load is skipped (its reason kept for the status report)
while the last good one keeps serving. Until the first version serves, a failed
load is retried a bounded number of times instead (`wait_first_version`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kitchenware.core.contract import SIGNATURE, versions
from kitchenware.model_server import backends, warmup
from kitchenware.model_server.backends import LoadError
from kitchenware.model_server.batcher import Batcher, BatchStats
from kitchenware.model_server.batching_config import BatchingConfig
from kitchenware.model_server.warmup import WarmupReport
from kitchenware.serving import proto

log = logging.getLogger("kitchenware.model_server")


def read_signature_defs(path: Path):
    """The SignatureDefs stored in PATH/saved_model.pb (protobuf only, no TensorFlow)."""
    from tensorflow.core.protobuf import saved_model_pb2

    try:
        saved = saved_model_pb2.SavedModel.FromString((path / "saved_model.pb").read_bytes())
    except Exception as exc:  # protobuf DecodeError, OSError
        raise LoadError(f"cannot read {path / 'saved_model.pb'}: {exc}") from None
    if not saved.meta_graphs:
        raise LoadError(f"{path}: saved_model.pb holds no MetaGraph")
    return saved.meta_graphs[0].signature_def


@dataclass(frozen=True)
class TensorSpec:
    name: str  # the alias clients use (signature key)
    dtype: int  # tensorflow DataType enum
    dims: tuple[int, ...] | None  # None = unknown rank; -1 = any size

    def describe(self) -> str:
        dims = "?" if self.dims is None else list(self.dims)
        return f"{proto.dtype_name(self.dtype)} {dims}"


class Signature:
    """One signature of a loaded SavedModel: its contract and how to run it."""

    def __init__(self, name: str, signature_def, function, batcher_config, stats, label):
        self.name = name
        self.inputs = {k: _spec(k, v) for k, v in signature_def.inputs.items()}
        self.outputs = {k: _spec(k, v) for k, v in signature_def.outputs.items()}
        self._function = function
        self.batcher = (
            Batcher(self.run, batcher_config, stats, f"{label}:{name}")
            if batcher_config is not None
            else None
        )

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Call the backend's function once on whole arrays."""
        return self._function(**inputs)

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run through the batcher when batching is on (and the batch isn't empty)."""
        rows = len(next(iter(inputs.values()))) if inputs else 0
        if self.batcher is None or rows == 0 or not _batchable(self.inputs):
            return self.run(inputs)
        return self.batcher.submit(inputs)

    def close(self) -> None:
        if self.batcher is not None:
            self.batcher.close()


def _spec(name: str, tensor_info) -> TensorSpec:
    shape = tensor_info.tensor_shape
    dims = None if shape.unknown_rank else tuple(int(d.size) for d in shape.dim)
    return TensorSpec(name, int(tensor_info.dtype), dims)


def _batchable(specs: dict[str, TensorSpec]) -> bool:
    """Batching needs every input to have a leading batch dimension of any size."""
    return all(s.dims and s.dims[0] == -1 for s in specs.values())


class LoadedVersion:
    """A SavedModel version loaded into memory, checked and warmed up."""

    def __init__(
        self,
        path: Path,
        version: int,
        batching: BatchingConfig | None = None,
        stats: BatchStats | None = None,
        warmup_iterations: int = 1,
        backend: str = "tensorflow",
    ):
        self.path = Path(path)
        self.version = int(version)
        # What GetModelMetadata answers, exactly as stored (TF Serving does the same),
        # read with protobuf alone: the OpenVINO backend runs without TensorFlow.
        self.signature_defs = read_signature_defs(self.path)
        loaded = backends.load(self.path, backend, self.signature_defs)
        self.backend = loaded.name
        self.backend_detail = loaded.detail
        self._loaded = loaded  # keeps variables / compiled models alive
        stats = stats or BatchStats()
        self.signatures: dict[str, Signature] = {}
        for name, function in loaded.functions.items():
            if name not in self.signature_defs:
                continue
            self.signatures[name] = Signature(
                name, self.signature_defs[name], function, batching, stats, f"v{version}"
            )
        if SIGNATURE not in self.signatures:
            self.close()
            raise LoadError(
                f"{self.path}: no {SIGNATURE!r} signature (has {sorted(self.signatures)})"
            )
        try:
            self.warmup = self.warm_up(warmup_iterations)
        except Exception as exc:
            self.close()
            raise LoadError(f"{self.path}: warm-up failed: {exc}") from None

    def warm_up(self, iterations: int = 1) -> WarmupReport:
        """Replay assets.extra/tf_serving_warmup_requests by TF Serving's rules (see warmup)."""
        return warmup.warm_up(
            self.path,
            self.signatures,
            lambda name, inputs: self.signatures[name].run(inputs),
            iterations,
        )

    def close(self) -> None:
        for signature in self.signatures.values():
            signature.close()


class VersionManager:
    """Which versions are served, kept up to date by polling the base path."""

    def __init__(
        self,
        base_path: str | Path,
        model_name: str,
        num_versions: int = 1,
        batching: BatchingConfig | None = None,
        stats: BatchStats | None = None,
        on_change: Callable[[VersionManager], None] | None = None,
        warmup_iterations: int = 1,
        backend: str = "tensorflow",
    ):
        """`on_change(manager)` runs after a load failure or a change of the served versions;
        `warmup_iterations`: how often each warm-up record runs (TF Serving's
        ModelWarmupOptions.num_request_iterations)."""
        self.base_path = Path(base_path)
        self.model_name = model_name
        self.num_versions = max(1, int(num_versions))
        self.batching = batching
        self.stats = stats or BatchStats()
        self.warmup_iterations = int(warmup_iterations)
        self.backend = backend
        self._on_change = on_change
        self._lock = threading.Lock()
        self._serving: dict[int, LoadedVersion] = {}
        self._retired: list[LoadedVersion] = []
        # version -> (saved_model.pb mtime, reason): a fixed folder is tried again.
        self._failures: dict[int, tuple[float, str]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_poll_error = ""

    # -- queries ---------------------------------------------------------------
    def serving(self) -> dict[int, LoadedVersion]:
        with self._lock:
            return dict(self._serving)

    def latest(self) -> LoadedVersion | None:
        serving = self.serving()
        return serving[max(serving)] if serving else None

    def failures(self) -> dict[int, str]:
        with self._lock:
            return {v: reason for v, (_, reason) in sorted(self._failures.items())}

    def not_loaded_reason(self) -> str:
        failures = self.failures()
        if failures:
            version, reason = max(failures.items())
            return f"version {version} failed to load: {reason}"
        if self.last_poll_error:
            return self.last_poll_error
        return f"no version of model {self.model_name!r} found under {self.base_path}"

    def status(self) -> dict:
        serving = self.serving()
        return {
            "model": self.model_name,
            "base_path": str(self.base_path),
            "serving_versions": sorted(serving),
            "failed_versions": {str(v): r for v, r in self.failures().items()},
            # file_found false: the version serves without warm-up (as TF Serving does).
            "warmup": {str(v): m.warmup.as_dict() for v, m in sorted(serving.items())},
            # Which runtime runs each version (--backend; auto decides per version).
            "backend": {
                str(v): {"name": m.backend, **m.backend_detail} for v, m in sorted(serving.items())
            },
        }

    # -- polling -----------------------------------------------------------------
    def _mtime(self, version: int) -> float:
        try:
            return (self.base_path / str(version) / "saved_model.pb").stat().st_mtime
        except OSError:
            return 0.0

    def _failed(self, version: int) -> bool:
        with self._lock:
            entry = self._failures.get(version)
        return entry is not None and entry[0] == self._mtime(version)

    def poll_once(self) -> bool:
        """Load what is new, retire what is gone; returns True when the served set changed."""
        with self._lock:
            retired, self._retired = self._retired, []
        for old in retired:  # retired one poll ago: in-flight requests have finished
            old.close()
        try:
            on_disk = versions(self.base_path)
            self.last_poll_error = ""
        except OSError as exc:
            self.last_poll_error = f"cannot list {self.base_path}: {exc}"
            log.warning("%s", self.last_poll_error)
            return False
        current = self.serving()
        loaded = dict(current)
        wanted = [v for v in on_disk if not self._failed(v)][-self.num_versions :]
        for version in reversed(wanted):
            if version in loaded:
                continue
            log.info("loading %s version %d from %s", self.model_name, version, self.base_path)
            started = time.monotonic()
            try:
                loaded[version] = LoadedVersion(
                    self.base_path / str(version),
                    version,
                    self.batching,
                    self.stats,
                    self.warmup_iterations,
                    self.backend,
                )
            except Exception as exc:
                reason = str(exc)
                with self._lock:
                    self._failures[version] = (self._mtime(version), reason)
                log.error(
                    "version %d of %s NOT loaded, keeping %s: %s",
                    version,
                    self.model_name,
                    sorted(current) or "nothing",
                    reason,
                )
                if self._on_change:
                    self._on_change(self)  # status reports now carry the reason
                continue
            with self._lock:
                self._failures.pop(version, None)
            log.info(
                "loaded version %d in %.1f s on %s",
                version,
                time.monotonic() - started,
                loaded[version].backend,
            )
        wanted = [v for v in on_disk if not self._failed(v)][-self.num_versions :]
        new = {v: loaded[v] for v in wanted if v in loaded}
        if not new:
            new = current  # never drop to zero versions (availability preserving)
        for version, model in loaded.items():
            if version not in new and version not in current:
                model.close()  # loaded but not wanted after all
        if sorted(new) == sorted(current):
            return False
        with self._lock:
            self._serving = new
            self._retired = [m for v, m in current.items() if v not in new]
        log.info("serving %s versions %s", self.model_name, sorted(new))
        if self._on_change:
            self._on_change(self)
        return True

    def wait_first_version(
        self,
        poll_seconds: float,
        max_retries: int,
        retry_interval: float,
        stop: threading.Event,
    ) -> bool:
        """Poll until a version serves; False when the newest one failed 1 + `max_retries`
        loads (or `stop` was set).

        TF Serving's ServerCore::Create waits in WaitUntilModelsAvailable before
        server.cc builds the gRPC server, and its loader harness retries a failed load
        `max_num_load_retries` times ("after the first failure"; main.cc), spaced by
        `load_retry_interval_micros`; then the start fails. Retrying here ignores the
        mtime check that applies once serving.
        """
        attempts: dict[int, int] = {}
        while not stop.is_set():
            self.poll_once()
            if self.serving():
                return True
            failures = self.failures()
            if not failures:
                stop.wait(poll_seconds if poll_seconds > 0 else 1.0)
                continue
            version = max(failures)
            attempts[version] = attempts.get(version, 0) + 1
            if attempts[version] > max_retries:
                log.error(
                    "giving up: version %d of %s failed %d load(s): %s",
                    version,
                    self.model_name,
                    attempts[version],
                    failures[version],
                )
                return False
            log.warning(
                "retrying version %d of %s in %.1f s (retry %d of %d)",
                version,
                self.model_name,
                retry_interval,
                attempts[version],
                max_retries,
            )
            if stop.wait(retry_interval):
                break
            with self._lock:
                self._failures.pop(version, None)
        return False

    def start(self, poll_seconds: float) -> None:
        """Poll in a background thread every `poll_seconds` (0: load once, no polling)."""
        self.poll_once()
        if poll_seconds <= 0:
            return
        self._thread = threading.Thread(
            target=self._poll_loop, args=(poll_seconds,), name="version-poller", daemon=True
        )
        self._thread.start()

    def _poll_loop(self, poll_seconds: float) -> None:
        while not self._stop.wait(poll_seconds):
            try:
                self.poll_once()
            except Exception:  # the poller must survive anything a folder can do
                log.exception("polling %s failed", self.base_path)

    def stop(self) -> None:
        """Stop polling; let batchers finish what is queued."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            models = list(self._serving.values()) + self._retired
            self._retired = []
        for model in models:
            model.close()
