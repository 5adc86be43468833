"""Prometheus metrics for the gateway, correct under several gunicorn workers.

With `PROMETHEUS_MULTIPROC_DIR` set (gunicorn.conf.py does it), every worker
writes its samples to files in that folder and `/metrics` adds them up across
workers; otherwise the numbers live in this process only (development server).
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
REQUEST_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
MODEL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class GatewayMetrics:
    """The gateway's metrics in a registry of their own (one per app, no module globals)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "gateway_requests",
            "HTTP requests answered, by endpoint, method and status code",
            ["endpoint", "method", "status"],
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "gateway_request_duration_seconds",
            "Time to answer a request, whole request",
            ["endpoint"],
            buckets=REQUEST_BUCKETS,
            registry=self.registry,
        )
        self.model_seconds = Histogram(
            "gateway_model_call_duration_seconds",
            "Time of the model server Predict call (gRPC round trip)",
            buckets=MODEL_BUCKETS,
            registry=self.registry,
        )
        self.images = Counter(
            "gateway_images_classified",
            "Images sent to the model server",
            registry=self.registry,
        )
        self.explain_model_seconds = Histogram(
            "gateway_model_explain_call_duration_seconds",
            "Time of the model server Predict call on the explain signature (gRPC round trip)",
            buckets=MODEL_BUCKETS,
            registry=self.registry,
        )
        self.overlay_seconds = Histogram(
            "gateway_explain_overlay_duration_seconds",
            "Time to draw and encode the /explain overlay PNG",
            buckets=MODEL_BUCKETS,
            registry=self.registry,
        )
        self.images_explained = Counter(
            "gateway_images_explained",
            "Images explained (Grad-CAM map and overlay answered)",
            registry=self.registry,
        )

    def observe_request(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, method, str(status)).inc()
        self.request_seconds.labels(endpoint).observe(seconds)

    def exposition(self) -> tuple[bytes, str]:
        """The text format of all samples: summed over workers in multiprocess mode."""
        if os.environ.get(MULTIPROC_ENV):
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
        else:
            registry = self.registry
        return generate_latest(registry), CONTENT_TYPE_LATEST
