"""The process pool every dataprep step decodes or draws images with.

Workers are started with "spawn", never "fork": a fork copies the calling
process in the middle of whatever its other threads are doing, and callers
here often run gRPC or TensorFlow threads (the test-suite, a notebook, a
process that trained a model first). gRPC then skips its fork handlers and a
forked worker can die at random ("A process in the process pool was terminated
abruptly"). Spawned workers start clean; each costs an interpreter start.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor


def process_pool(workers: int) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
