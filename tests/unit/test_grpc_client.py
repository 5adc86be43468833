"""The gRPC client's service config: retries of UNAVAILABLE, throttled per gRFC A6."""

from __future__ import annotations

import json

from kitchenware.serving.grpc_client import (
    RETRY_MAX_TOKENS,
    RETRY_TOKEN_RATIO,
    channel_options,
    service_config,
)


def test_retries_are_throttled_by_default():
    config = json.loads(service_config())
    assert config["retryThrottling"] == {"maxTokens": RETRY_MAX_TOKENS, "tokenRatio": 0.1}
    policy = config["methodConfig"][0]["retryPolicy"]
    assert policy["retryableStatusCodes"] == ["UNAVAILABLE"] and policy["maxAttempts"] == 5
    # gRFC A6: maxTokens in (0, 1000], tokenRatio > 0 with at most 3 decimals.
    assert 0 < RETRY_MAX_TOKENS <= 1000 and RETRY_TOKEN_RATIO > 0
    assert round(RETRY_TOKEN_RATIO, 3) == RETRY_TOKEN_RATIO


def test_throttling_can_be_turned_off_and_reaches_the_channel():
    assert "retryThrottling" not in json.loads(service_config(retry_throttling=None))
    options = dict(channel_options(retry_throttling=(20, 0.5)))
    assert json.loads(options["grpc.service_config"])["retryThrottling"] == {
        "maxTokens": 20,
        "tokenRatio": 0.5,
    }
