"""Run a version's OpenVINO IR (written by `kitchenware export`) behind a signature's contract.

Nothing here imports TensorFlow: the IR replaces the SavedModel's functions, the
signature contract comes from saved_model.pb (read with protobuf alone), and the
string outputs OpenVINO cannot produce (`classes`) are filled from the values the
export recorded, so a client cannot tell this runtime from TensorFlow.

Signatures may share one IR (kitchenware.export.openvino_ir): an entry that names
the host IR's outputs it uses (`ir_outputs`) is compiled from a model with only
those outputs, and each xml is read once however many signatures use it.

Speed on a CPU comes from several infer requests in flight, not one big
synchronous call: a compiled model with PERFORMANCE_HINT=THROUGHPUT gets a pool
of infer requests, and every row of a batch runs as its own request.
"""

from __future__ import annotations

import json
import logging
import math
import os
import queue
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kitchenware.core.config import option
from kitchenware.core.contract import (
    OPENVINO_DIR,
    OPENVINO_MANIFEST,
    OUTPUT_HEATMAP,
    OUTPUT_HEATMAPS,
)
from kitchenware.core.settings import SettingsError, from_env

log = logging.getLogger("kitchenware.model_server")

# Probabilities from the IR may differ from TensorFlow's by this much (absolute) on the
# self-test image: the CPU plugin runs in bf16 where the CPU supports it (AVX-512 BF16,
# AMX). On real photos up to ~0.1 was measured in bf16, 3e-6 in f32 (docu/deploy.md).
SELF_TEST_ATOL = 0.02
# Grad-CAM maps are divided by their own maximum, which magnifies bf16 rounding without
# bound on the near-flat maps of a grey image (0.026 to 0.26 seen on tiny models): the
# self-test checks their shape and range, and the probabilities next to them by value.
MAP_OUTPUTS = (OUTPUT_HEATMAP, OUTPUT_HEATMAPS)
# The inference precision: unset or "auto" lets OpenVINO choose (bf16 on CPUs with
# AVX-512 BF16 or AMX, else f32); "f32" gives TensorFlow's answers at a lower speed.
PRECISION_ENV = "OPENVINO_INFERENCE_PRECISION"
PRECISIONS = ("auto", "f32", "bf16")


@dataclass
class OpenVinoSettings:
    """The runtime's environment settings, read with the project's one set of rules."""

    precision: str = option(
        "auto", env=PRECISION_ENV, choices=PRECISIONS, help="OpenVINO's inference precision"
    )


def precision_setting() -> dict:
    """The compile option from OPENVINO_INFERENCE_PRECISION (a clear error when invalid)."""
    try:
        value = from_env(OpenVinoSettings).precision
    except SettingsError as exc:
        raise OpenVinoUnavailable(str(exc)) from None
    return {} if value == "auto" else {"INFERENCE_PRECISION_HINT": value}


class OpenVinoUnavailable(Exception):
    """The version cannot run on OpenVINO here (no IR, no runtime, self-test failed)."""


def manifest_path(version_dir: Path) -> Path:
    return Path(version_dir) / OPENVINO_DIR / OPENVINO_MANIFEST


def read_manifest(version_dir: Path) -> dict | None:
    """The export's description of the IR in this version, or None when it has none."""
    path = manifest_path(version_dir)
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise OpenVinoUnavailable(f"{path} is not readable JSON: {exc}") from None
    if not isinstance(manifest.get("signatures"), dict):
        raise OpenVinoUnavailable(f"{path} has no 'signatures' object")
    return manifest


def cpu_quota_threads() -> int | None:
    """CPUs the cgroup's quota allows (rounded up), or None without a quota.

    OpenVINO sizes its thread pool from the CPUs it sees, not from a container's
    quota (openvinotoolkit/openvino#37838), so the server passes this in.
    """
    candidates = []
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            candidates.append(int(quota) / int(period))
    except (OSError, ValueError):
        pass
    try:
        quota = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        if quota > 0 and period > 0:
            candidates.append(quota / period)
    except (OSError, ValueError):
        pass
    if not candidates:
        return None
    return max(1, math.ceil(min(candidates)))


def thread_count() -> int:
    """Threads for the CPU plugin: the CPUs this process may run on, capped by the quota."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    quota = cpu_quota_threads()
    return max(1, min(usable or 1, quota or usable or 1))


class IrFunction:
    """One signature's IR, compiled once, called like the SavedModel's function."""

    def __init__(self, core, model, entry: dict, threads: int, name: str):
        """`model`: the IR as read (ov.Model); an entry with `ir_outputs` uses only those."""
        self.input_name = entry["input"]
        self.numeric = list(entry["outputs"])  # IR output i -> this alias
        self.dtypes = {k: np.dtype(v) for k, v in entry["output_dtypes"].items()}
        # String outputs, one row per image: the value TensorFlow gives every row.
        self.constant_rows = {
            k: np.array([v.encode() for v in row], dtype=object)
            for k, row in entry.get("constant_rows", {}).items()
        }
        if "ir_outputs" in entry:
            import openvino as ov

            # Another signature's IR: keep only these outputs (OpenVINO drops what they do
            # not need). From a clone, so the read model that others compile stays as read.
            full = model.clone()
            outputs = [full.output(int(i)) for i in entry["ir_outputs"]]
            if len(outputs) != len(self.numeric):
                raise ValueError(f"ir_outputs {entry['ir_outputs']} do not match {self.numeric}")
            model = ov.Model(outputs, full.get_parameters(), name)
        self.compiled = core.compile_model(
            model,
            "CPU",
            {
                "PERFORMANCE_HINT": "THROUGHPUT",
                "INFERENCE_NUM_THREADS": threads,
                **precision_setting(),
            },
        )
        requests = max(1, int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        self._idle: queue.Queue = queue.Queue()
        for _ in range(requests):
            self._idle.put(self.compiled.create_infer_request())
        self.requests = requests
        hint = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        self.precision = hint.get_type_name() if hasattr(hint, "get_type_name") else str(hint)

    def __call__(self, **inputs) -> dict[str, np.ndarray]:
        if set(inputs) != {self.input_name}:
            # What calling the TF function with other keywords raises, in substance.
            raise TypeError(f"expected input {self.input_name!r}, got {sorted(inputs)}")
        images = np.ascontiguousarray(inputs[self.input_name])
        rows = len(images)
        columns = {k: [None] * rows for k in self.numeric}
        pending: deque = deque()

        def finish(row: int, request) -> None:
            request.wait()
            try:
                for index, alias in enumerate(self.numeric):
                    columns[alias][row] = np.array(request.get_output_tensor(index).data)[0]
            finally:
                self._idle.put(request)

        for row in range(rows):
            while True:
                try:
                    request = self._idle.get_nowait()
                    break
                except queue.Empty:
                    if pending:
                        finish(*pending.popleft())  # our own oldest frees a request
                    else:
                        request = self._idle.get()  # others hold them all: wait for one
                        break
            request.start_async({0: images[row : row + 1]})
            pending.append((row, request))
        while pending:
            finish(*pending.popleft())
        result = {k: np.stack(v).astype(self.dtypes[k], copy=False) for k, v in columns.items()}
        for alias, row_value in self.constant_rows.items():
            result[alias] = np.tile(row_value, (rows, 1)) if rows else row_value[:0][None]
        return result


class OpenVinoVersion:
    """Every signature of one version that has IR, compiled for the CPU."""

    def __init__(self, version_dir: Path, manifest: dict):
        try:
            import openvino as ov
        except ImportError as exc:
            raise OpenVinoUnavailable(f"the openvino package is not installed: {exc}") from None
        self.version_dir = Path(version_dir)
        self.manifest = manifest
        self.threads = thread_count()
        core = ov.Core()
        self.functions: dict[str, IrFunction] = {}
        folder = self.version_dir / OPENVINO_DIR
        read: dict[str, object] = {}  # xml file name -> model: a shared IR is read once
        for name, entry in manifest["signatures"].items():
            xml = folder / entry["xml"]
            try:
                if entry["xml"] not in read:
                    read[entry["xml"]] = core.read_model(str(xml))
                self.functions[name] = IrFunction(
                    core, read[entry["xml"]], entry, self.threads, name
                )
            except Exception as exc:  # OpenVINO raises RuntimeError for a bad IR
                raise OpenVinoUnavailable(f"cannot compile {xml} for {name!r}: {exc}") from None
        first = next(iter(self.functions.values()), None)
        self.precision = first.precision if first else ""
        self.requests = first.requests if first else 0

    def self_test(self) -> None:
        """Run each signature on the warm-up image the export checked, compare with TF's answer."""
        for name, entry in self.manifest["signatures"].items():
            check = entry.get("self_test")
            if not check:
                raise OpenVinoUnavailable(f"the IR of {name!r} carries no self-test")
            image = np.full(check["shape"], check["fill"], dtype=np.uint8)
            outputs = self.functions[name](**{entry["input"]: image})
            for alias, expected in check["expected"].items():
                got = np.asarray(outputs[alias], dtype=np.float64)
                want = np.asarray(expected, dtype=np.float64)
                if alias in MAP_OUTPUTS:
                    ok = got.shape == want.shape and bool(np.all((got >= 0) & (got <= 1 + 1e-3)))
                    problem = "has another shape or values outside [0, 1]"
                else:
                    ok = got.shape == want.shape and np.allclose(got, want, atol=SELF_TEST_ATOL)
                    worst = float(np.max(np.abs(got - want))) if got.shape == want.shape else -1
                    problem = (
                        f"differs from TensorFlow's by {worst:.4g} (tolerance {SELF_TEST_ATOL})"
                    )
                if not ok:
                    raise OpenVinoUnavailable(f"self-test of {name!r} failed: {alias} {problem}")

    def describe(self) -> dict:
        return {
            "precision": self.precision,
            "infer_requests": self.requests,
            "threads": self.threads,
        }
