"""Dynamic batching (kitchenware.model_server.batcher) and TF Serving's batching parameters file."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from kitchenware.core.errors import KitchenwareError
from kitchenware.model_server.batcher import (
    Batcher,
    BatcherClosed,
    BatchStats,
    QueueFull,
    TaskTooLarge,
)
from kitchenware.model_server.batching_config import (
    BatchingConfig,
    load_batching_parameters,
    parse_batching_parameters,
)

# The file format TF Serving's --batching_parameters_file reads.
TF_SERVING_FILE = """
max_batch_size { value: 32 }
batch_timeout_micros { value: 5000 }
max_enqueued_batches { value: 100 }
num_batch_threads { value: 2 }
thread_pool_name { value: "kitchenware_batch_threads" }
allowed_batch_sizes: 8
allowed_batch_sizes: 16
allowed_batch_sizes: 32
pad_variable_length_inputs: false
"""


def test_parses_tf_serving_text_format(tmp_path):
    path = tmp_path / "batching.config"
    path.write_text(TF_SERVING_FILE)
    config = load_batching_parameters(path)
    assert config.max_batch_size == 32 and config.batch_timeout_micros == 5000
    assert config.num_batch_threads == 2 and config.max_enqueued_batches == 100
    assert config.thread_pool_name == "kitchenware_batch_threads"
    assert config.allowed_batch_sizes == (8, 16, 32)
    assert config.padded_size(9) == 16 and config.padded_size(32) == 32


def test_fields_missing_from_the_file_keep_the_flags():
    base = BatchingConfig(max_batch_size=8, batch_timeout_micros=1000)
    config = parse_batching_parameters("batch_timeout_micros { value: 250 }", base)
    assert (config.max_batch_size, config.batch_timeout_micros) == (8, 250)


@pytest.mark.parametrize(
    "text, needle",
    [
        (
            "max_batch_size { value: 32 }\nmax_batch_sise { value: 4 }",
            'no field named "max_batch_sise"',
        ),
        ("max_batch_size: 32", "max_batch_size"),  # a wrapper field needs { value: N }
        ("max_batch_size { value: 0 }", "max_batch_size must be >= 1"),
        (
            "max_batch_size { value: 32 }\nallowed_batch_sizes: 16\nallowed_batch_sizes: 8",
            "increasing",
        ),
        ("max_batch_size { value: 32 }\nallowed_batch_sizes: 16", "must equal max_batch_size"),
        # TF Serving reads max_execution_batch_size only when splitting is on.
        ("max_execution_batch_size { value: 8 }", "only with enable_large_batch_splitting"),
        # With splitting too, the last allowed size is compared with max_batch_size.
        (
            "max_batch_size { value: 32 }\nenable_large_batch_splitting { value: true }\n"
            "max_execution_batch_size { value: 8 }\nallowed_batch_sizes: 4\nallowed_batch_sizes: 8",
            "must equal max_batch_size",
        ),
    ],
)
def test_bad_parameters_are_rejected_with_a_reason(text, needle):
    with pytest.raises(KitchenwareError, match=needle):
        parse_batching_parameters(text)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(KitchenwareError, match="cannot read batching parameters file"):
        load_batching_parameters(tmp_path / "nope.config")


def double(inputs):
    """A real (if tiny) batched computation: every row's answer depends only on that row."""
    x = inputs["x"]
    return {"y": x * 2, "rows": np.full(len(x), len(x))}


def submit_concurrently(batcher, arrays):
    results = [None] * len(arrays)

    def work(i):
        results[i] = batcher.submit({"x": arrays[i]})

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(arrays))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


def test_concurrent_requests_share_one_batch_and_get_their_own_rows():
    stats = BatchStats()
    # A long timeout: the batch is released only once it is full (8 rows), so the
    # outcome does not depend on thread timing.
    config = BatchingConfig(max_batch_size=8, batch_timeout_micros=30_000_000)
    batcher = Batcher(double, config, stats, "test")
    arrays = [np.full((1, 3), i, dtype=np.int64) for i in range(8)]
    results = submit_concurrently(batcher, arrays)
    batcher.close()
    for i, result in enumerate(results):
        np.testing.assert_array_equal(result["y"], arrays[i] * 2)
        assert result["rows"].tolist() == [8]  # computed in a batch of 8
    assert stats.as_dict()["requests_per_batch"] == {"8": 1}


def test_requests_above_max_batch_size_are_refused_split_or_not():
    """TF Serving: "Task size N is larger than maximum input batch size M", INVALID_ARGUMENT."""
    for splitting in (False, True):
        config = BatchingConfig(
            max_batch_size=4, batch_timeout_micros=0, enable_large_batch_splitting=splitting
        )
        batcher = Batcher(double, config, BatchStats(), "test")
        with pytest.raises(
            TaskTooLarge, match="Task size 5 is larger than maximum input batch size 4"
        ):
            batcher.submit({"x": np.zeros((5, 1), dtype=np.int64)})
        assert batcher.submit({"x": np.ones((4, 1), dtype=np.int64)})["y"].tolist() == [[2]] * 4
        batcher.close()


def test_splitting_runs_a_request_in_execution_sized_batches_padded_to_allowed_sizes():
    stats = BatchStats()
    config = BatchingConfig(
        max_batch_size=10,
        batch_timeout_micros=0,
        enable_large_batch_splitting=True,
        max_execution_batch_size=4,
        allowed_batch_sizes=(2, 4, 10),
    )
    batcher = Batcher(double, config, stats, "test")
    x = np.arange(10, dtype=np.int64).reshape(10, 1)
    result = batcher.submit({"x": x})
    np.testing.assert_array_equal(result["y"], x * 2)
    # 10 rows -> tasks of 4, 4, 2; each batch ran at an allowed size (2 or 4).
    assert set(result["rows"].tolist()) <= {2, 4} and len(result["y"]) == 10
    batcher.close()
    assert stats.as_dict()["rows"] == 10


def test_without_splitting_max_execution_batch_size_is_not_the_limit():
    config = BatchingConfig(max_batch_size=8)
    assert config.execution_batch_size == 8
    split = BatchingConfig(
        max_batch_size=8, enable_large_batch_splitting=True, max_execution_batch_size=2
    )
    assert split.execution_batch_size == 2


def test_errors_reach_every_waiting_request_and_close_refuses_new_work():
    def broken(_inputs):
        raise RuntimeError("model exploded")

    batcher = Batcher(broken, BatchingConfig(batch_timeout_micros=0), BatchStats(), "test")
    with pytest.raises(RuntimeError, match="model exploded"):
        batcher.submit({"x": np.zeros((1, 1))})
    batcher.close()
    with pytest.raises(BatcherClosed):
        batcher.submit({"x": np.zeros((1, 1))})


def test_full_queue_is_refused():
    entered, release = threading.Event(), threading.Event()

    def slow(inputs):
        entered.set()
        release.wait(30)
        return {"y": inputs["x"]}

    config = BatchingConfig(max_batch_size=1, batch_timeout_micros=0, max_enqueued_batches=1)
    batcher = Batcher(slow, config, BatchStats(), "test")
    results = []
    first = threading.Thread(target=lambda: results.append(batcher.submit({"x": np.ones((1, 1))})))
    first.start()
    assert entered.wait(30)  # the batch thread is busy with the first request
    second = threading.Thread(target=lambda: results.append(batcher.submit({"x": np.ones((1, 1))})))
    second.start()  # waits in the queue, which now holds its one allowed batch
    while not batcher._queued_rows:
        release.wait(0.01)
    with pytest.raises(QueueFull, match="queue to which this task was submitted is full"):
        batcher.submit({"x": np.zeros((1, 1))})
    release.set()
    first.join(30)
    second.join(30)
    batcher.close()
    assert len(results) == 2  # the queued requests were served, not dropped
