"""Server-side dynamic batching, configured like TF Serving's batching.

Concurrent Predict calls each bring a few images; running the model once on all
of them uses the CPU far better than one call per request. Requests wait in a
queue; a batch thread takes up to `max_batch_size` rows, waiting at most
`batch_timeout_micros` after the oldest request arrived, runs the model once
and hands every request its own slice of the outputs. The settings and their
file format live in `batching_config`.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
from collections.abc import Callable

import numpy as np

from kitchenware.core.errors import KitchenwareError
from kitchenware.model_server.batching_config import BatchingConfig

log = logging.getLogger("kitchenware.model_server")


class QueueFull(KitchenwareError):
    """The batch queue holds `max_enqueued_batches` batches already (gRPC: UNAVAILABLE)."""


class TaskTooLarge(KitchenwareError, ValueError):
    """A request holds more rows than `max_batch_size` (gRPC: INVALID_ARGUMENT, as TF Serving)."""


class BatcherClosed(KitchenwareError):
    """The batcher was shut down (its model version was unloaded)."""


class BatchStats:
    """Counts of batches and their sizes: how a test (or an operator) sees batching happen."""

    def __init__(self):
        self._lock = threading.Lock()
        self.requests = 0
        # Every Predict RPC received and every one refused for a full queue: what a
        # client's retries cost the server shows as predict_calls above requests sent.
        self.predict_calls = 0
        self.queue_full = 0
        self.in_flight = 0
        self.batches = 0
        self.rows = 0
        self.rows_per_batch: collections.Counter[int] = collections.Counter()
        self.requests_per_batch: collections.Counter[int] = collections.Counter()
        self.changed = threading.Event()

    def enter(self) -> None:
        """A Predict call started (shown as `in_flight` until `leave`)."""
        with self._lock:
            self.predict_calls += 1
            self.in_flight += 1
        self.changed.set()

    def leave(self) -> None:
        with self._lock:
            self.in_flight -= 1
        self.changed.set()

    def refused(self) -> None:
        """A Predict call was refused because the batch queue was full."""
        with self._lock:
            self.queue_full += 1
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
                "predict_calls": self.predict_calls,
                "queue_full": self.queue_full,
                "requests": self.requests,
                "batches": self.batches,
                "rows": self.rows,
                "max_requests_in_a_batch": max(self.requests_per_batch, default=0),
                "rows_per_batch": {str(k): v for k, v in sorted(self.rows_per_batch.items())},
                "requests_per_batch": {
                    str(k): v for k, v in sorted(self.requests_per_batch.items())
                },
            }


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
