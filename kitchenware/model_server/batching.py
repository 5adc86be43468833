"""Server-side dynamic batching, configured like TF Serving's batching.

Concurrent Predict calls each bring a few images; running the model once on all
of them uses the CPU far better than one call per request. Requests wait in a
queue; a batch thread takes up to `max_batch_size` rows, waiting at most
`batch_timeout_micros` after the oldest request arrived, runs the model once
and hands every request its own slice of the outputs.

`parse_batching_parameters` reads TF Serving's `--batching_parameters_file`
(protobuf text format of `BatchingParameters`), so the file shipped for the
official server works here too; unknown fields are an error, not ignored.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from google.protobuf import (
    descriptor_pb2,
    descriptor_pool,
    message_factory,
    text_format,
    wrappers_pb2,  # noqa: F401  (registers wrappers.proto in the pool)
)

from kitchenware.core.errors import KitchenwareError

log = logging.getLogger("kitchenware.model_server.batching")


class QueueFull(KitchenwareError):
    """The batch queue holds `max_enqueued_batches` batches already (gRPC: UNAVAILABLE)."""


class TaskTooLarge(KitchenwareError, ValueError):
    """A request holds more rows than `max_batch_size` (gRPC: INVALID_ARGUMENT, as TF Serving)."""


class BatcherClosed(KitchenwareError):
    """The batcher was shut down (its model version was unloaded)."""


@dataclasses.dataclass(frozen=True)
class BatchingConfig:
    """TF Serving's BatchingParameters, with TF Serving's meaning for each field."""

    max_batch_size: int = 32
    batch_timeout_micros: int = 5000
    max_enqueued_batches: int = 100
    num_batch_threads: int = 1
    thread_pool_name: str = "batch_threads"
    allowed_batch_sizes: tuple[int, ...] = ()
    # Accepted for compatibility: images of one signature all have one size here.
    pad_variable_length_inputs: bool = False
    # TF Serving's rule: a request is never larger than max_batch_size; with
    # splitting on, it may span several batches of max_execution_batch_size rows.
    enable_large_batch_splitting: bool = False
    max_execution_batch_size: int | None = None

    def __post_init__(self):
        def positive(name):
            if getattr(self, name) < 1:
                raise KitchenwareError(f"batching: {name} must be >= 1, got {getattr(self, name)}")

        for name in ("max_batch_size", "max_enqueued_batches", "num_batch_threads"):
            positive(name)
        if self.batch_timeout_micros < 0:
            raise KitchenwareError(
                f"batching: batch_timeout_micros must be >= 0, got {self.batch_timeout_micros}"
            )
        if self.max_execution_batch_size is not None:
            if not self.enable_large_batch_splitting:
                raise KitchenwareError(
                    "batching: max_execution_batch_size applies only with "
                    "enable_large_batch_splitting { value: true } (TF Serving ignores it otherwise)"
                )
            positive("max_execution_batch_size")
        sizes = self.allowed_batch_sizes
        if sizes:
            if list(sizes) != sorted(set(sizes)) or sizes[0] < 1:
                raise KitchenwareError(
                    f"batching: allowed_batch_sizes must be positive and increasing, got {list(sizes)}"
                )
            # TF Serving (bundle_factory_util.h) compares with max_batch_size, split or not.
            if sizes[-1] != self.max_batch_size:
                raise KitchenwareError(
                    f"batching: the last allowed_batch_sizes entry ({sizes[-1]}) must equal "
                    f"max_batch_size ({self.max_batch_size})"
                )

    @property
    def execution_batch_size(self) -> int:
        """Rows per model run: max_execution_batch_size when splitting, else max_batch_size."""
        if self.enable_large_batch_splitting and self.max_execution_batch_size:
            return self.max_execution_batch_size
        return self.max_batch_size

    @property
    def timeout_s(self) -> float:
        return self.batch_timeout_micros / 1e6

    def padded_size(self, rows: int) -> int:
        """The smallest allowed batch size that holds `rows` (rows itself when unrestricted)."""
        for size in self.allowed_batch_sizes:
            if size >= rows:
                return size
        return rows


# -- TF Serving's text format ------------------------------------------------
# (field, type, label); wrapper types are written `name { value: X }` in the file.
_FIELDS = [
    ("max_batch_size", "google.protobuf.Int64Value", "optional"),
    ("batch_timeout_micros", "google.protobuf.Int64Value", "optional"),
    ("max_enqueued_batches", "google.protobuf.Int64Value", "optional"),
    ("num_batch_threads", "google.protobuf.Int64Value", "optional"),
    ("thread_pool_name", "google.protobuf.StringValue", "optional"),
    ("allowed_batch_sizes", "int64", "repeated"),
    ("pad_variable_length_inputs", "bool", "optional"),
    ("enable_large_batch_splitting", "google.protobuf.BoolValue", "optional"),
    ("max_execution_batch_size", "google.protobuf.Int64Value", "optional"),
]
_message_class = None


def _batching_parameters_class():
    """BatchingParameters as a protobuf message class, built at run time (no TF Serving needed)."""
    global _message_class
    if _message_class is None:
        f = descriptor_pb2.FieldDescriptorProto
        file = descriptor_pb2.FileDescriptorProto(
            name="kitchenware/batching_parameters.proto",
            package="kitchenware.serving",
            syntax="proto3",
            dependency=["google/protobuf/wrappers.proto"],
        )
        message = file.message_type.add(name="BatchingParameters")
        for number, (name, type_, label) in enumerate(_FIELDS, start=1):
            field = message.field.add(name=name, number=number)
            field.label = f.LABEL_REPEATED if label == "repeated" else f.LABEL_OPTIONAL
            if type_ == "int64":
                field.type = f.TYPE_INT64
            elif type_ == "bool":
                field.type = f.TYPE_BOOL
            else:
                field.type = f.TYPE_MESSAGE
                field.type_name = "." + type_
        pool = descriptor_pool.Default()
        try:
            descriptor = pool.FindMessageTypeByName("kitchenware.serving.BatchingParameters")
        except KeyError:
            descriptor = pool.Add(file).message_types_by_name["BatchingParameters"]
        _message_class = message_factory.GetMessageClass(descriptor)
    return _message_class


def parse_batching_parameters(text: str, base: BatchingConfig | None = None) -> BatchingConfig:
    """Parse TF Serving's batching parameters text; fields not in `text` keep `base`'s values."""
    message = _batching_parameters_class()()
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as exc:
        known = ", ".join(name for name, _, _ in _FIELDS)
        raise KitchenwareError(
            f"batching parameters: {exc} (TF Serving's fields are: {known})"
        ) from None
    values = {}
    for name, type_, label in _FIELDS:
        if label == "repeated":
            if len(getattr(message, name)):
                values[name] = tuple(int(v) for v in getattr(message, name))
        elif type_.startswith("google.protobuf."):
            if message.HasField(name):
                values[name] = getattr(message, name).value
        elif getattr(message, name):
            values[name] = getattr(message, name)
    return dataclasses.replace(base or BatchingConfig(), **values)


def load_batching_parameters(
    path: str | Path, base: BatchingConfig | None = None
) -> BatchingConfig:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise KitchenwareError(f"cannot read batching parameters file {path}: {exc}") from None
    try:
        return parse_batching_parameters(text, base)
    except KitchenwareError as exc:
        raise KitchenwareError(f"{path}: {exc}") from None


# -- statistics ----------------------------------------------------------------
class BatchStats:
    """Counts of batches and their sizes: how a test (or an operator) sees batching happen."""

    def __init__(self):
        self._lock = threading.Lock()
        self.requests = 0
        self.in_flight = 0
        self.batches = 0
        self.rows = 0
        self.rows_per_batch: collections.Counter[int] = collections.Counter()
        self.requests_per_batch: collections.Counter[int] = collections.Counter()
        self.changed = threading.Event()

    def enter(self) -> None:
        """A Predict call started (shown as `in_flight` until `leave`)."""
        with self._lock:
            self.in_flight += 1
        self.changed.set()

    def leave(self) -> None:
        with self._lock:
            self.in_flight -= 1
        self.changed.set()

    def record(self, requests: int, rows: int) -> None:
        with self._lock:
            self.requests += requests
            self.batches += 1
            self.rows += rows
            self.rows_per_batch[rows] += 1
            self.requests_per_batch[requests] += 1
        self.changed.set()

    def as_dict(self) -> dict:
        with self._lock:
            return {
                "in_flight": self.in_flight,
                "requests": self.requests,
                "batches": self.batches,
                "rows": self.rows,
                "max_requests_in_a_batch": max(self.requests_per_batch, default=0),
                "rows_per_batch": {str(k): v for k, v in sorted(self.rows_per_batch.items())},
                "requests_per_batch": {
                    str(k): v for k, v in sorted(self.requests_per_batch.items())
                },
            }


# -- the batcher -----------------------------------------------------------------
@dataclasses.dataclass
class _Task:
    inputs: dict[str, np.ndarray]
    rows: int
    arrived: float
    done: threading.Event = dataclasses.field(default_factory=threading.Event)
    outputs: dict[str, np.ndarray] | None = None
    error: BaseException | None = None


RunBatch = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


class Batcher:
    """Queue + batch threads in front of one model signature."""

    def __init__(self, run_batch: RunBatch, config: BatchingConfig, stats: BatchStats, name: str):
        self._run_batch = run_batch
        self.config = config
        self._stats = stats
        self._name = name
        self._queue: collections.deque[_Task] = collections.deque()
        self._queued_rows = 0
        self._cond = threading.Condition()
        self._closed = False
        self._threads = [
            threading.Thread(
                target=self._loop, name=f"{config.thread_pool_name}-{name}-{i}", daemon=True
            )
            for i in range(config.num_batch_threads)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run `inputs` (same leading dimension) as part of a batch; blocks until done."""
        rows = len(next(iter(inputs.values())))
        self.check_size(rows)
        limit = self.config.execution_batch_size
        if rows > limit:  # only with splitting: one request over several batches
            tasks = [
                _Task({k: v[s : s + limit] for k, v in inputs.items()}, min(limit, rows - s), 0.0)
                for s in range(0, rows, limit)
            ]
        else:
            tasks = [_Task(inputs, rows, 0.0)]
        with self._cond:
            if self._closed:
                raise BatcherClosed(f"batcher {self._name} is closed")
            self._check_capacity(rows)
            now = time.monotonic()
            for task in tasks:
                task.arrived = now
                self._queue.append(task)
            self._queued_rows += rows
            self._cond.notify_all()
        for task in tasks:
            task.done.wait()
            if task.error is not None:
                raise task.error
        if len(tasks) == 1:
            return tasks[0].outputs
        return {k: np.concatenate([t.outputs[k] for t in tasks]) for k in tasks[0].outputs}

    def check_size(self, rows: int) -> None:
        """TF Serving refuses a request above max_batch_size whether splitting is on or not."""
        if rows > self.config.max_batch_size:
            raise TaskTooLarge(
                f"Task size {rows} is larger than maximum input batch size "
                f"{self.config.max_batch_size}"
            )

    def _check_capacity(self, rows: int) -> None:
        """Queue-full as TF Serving's shared batch scheduler decides it (caller holds the lock).

        Queued rows form batches of `limit` rows; the open (last) batch may take
        more rows while it has room, a new batch only below max_enqueued_batches.
        """
        limit = self.config.execution_batch_size
        batches, open_rows = 0, 0  # queued tasks packed into batches as _take_batch packs them
        for task in self._queue:
            if not batches or open_rows + task.rows > limit:
                batches, open_rows = batches + 1, 0
            open_rows += task.rows
        if self.config.enable_large_batch_splitting:
            capacity = (self.config.max_enqueued_batches - batches) * limit + (
                limit - open_rows if batches else 0
            )
            if rows > capacity:
                raise QueueFull(
                    "The batch scheduling queue to which this task was submitted is full; "
                    f"task size is {rows} but scheduling capacity is only {capacity} "
                    f"(num_enqueued_batches={batches}, "
                    f"max_enqueued_batches={self.config.max_enqueued_batches})"
                )
            return
        if batches and open_rows + rows > limit and batches >= self.config.max_enqueued_batches:
            raise QueueFull(
                "The batch scheduling queue to which this task was submitted is full; "
                f"currently {batches} batches enqueued and max_enqueued_batches is "
                f"{self.config.max_enqueued_batches}"
            )

    def _take_batch(self) -> list[_Task] | None:
        limit = self.config.execution_batch_size
        with self._cond:
            while not self._queue:
                if self._closed:
                    return None
                self._cond.wait()
            deadline = self._queue[0].arrived + self.config.timeout_s
            while self._queued_rows < limit and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._queue:
                    break
                self._cond.wait(remaining)
            batch, rows = [], 0
            while self._queue and rows + self._queue[0].rows <= limit:
                task = self._queue.popleft()
                batch.append(task)
                rows += task.rows
            self._queued_rows -= rows
            return batch

    def _loop(self) -> None:
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            if batch:
                self._run(batch)

    def _run(self, batch: list[_Task]) -> None:
        rows = sum(t.rows for t in batch)
        padded = self.config.padded_size(rows)
        try:
            inputs = {}
            for key in batch[0].inputs:
                parts = [t.inputs[key] for t in batch]
                if padded > rows:
                    pad_shape = (padded - rows, *parts[0].shape[1:])
                    parts.append(np.zeros(pad_shape, dtype=parts[0].dtype))
                inputs[key] = np.concatenate(parts) if len(parts) > 1 else parts[0]
            outputs = self._run_batch(inputs)
            start = 0
            for task in batch:
                task.outputs = {k: v[start : start + task.rows] for k, v in outputs.items()}
                start += task.rows
        except BaseException as exc:  # every waiting request must learn about the failure
            log.warning("batch of %d rows failed: %s", rows, exc)
            for task in batch:
                task.error = exc
        self._stats.record(len(batch), rows)
        log.debug("%s: ran %d requests as one batch of %d rows", self._name, len(batch), rows)
        for task in batch:
            task.done.set()

    def close(self, timeout: float | None = None) -> None:
        """Stop accepting, run what is queued (without waiting for the timeout), stop the threads."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout)
