"""Faults under load against real processes: the scenarios of devtools.faults, asserted.

One stack for the module (model server with a stats file, gunicorn with 2 workers x
4 threads, a local web server for URL inputs), all on 127.0.0.1. The scenario code
is shared with `make faults`, so the script reports exactly what is tested here.

Related tests elsewhere: test_gateway_serving.py kills/restarts the model server
without load and checks /readyz and the 504 of a hung server; test_model_server.py
checks broken versions and GetModelStatus at the gRPC level.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from support.paths import NETGUARD

from devtools import faults
from devtools.stack import PhotoServer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(exported_model, tmp_path_factory):
    work = tmp_path_factory.mktemp("faults")
    base = work / "models" / "kitchenware"
    shutil.copytree(exported_model, base)
    with faults.FaultStack(base, work, workers=2, threads=4, fetch_timeout=4.0,
                           gateway_pythonpath=(str(NETGUARD),)) as running:  # fmt: skip
        yield running


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[tuple[str, bytes]]:
    """Real photos from kitchenware-mini when present, else synthetic sample data."""
    return faults.load_photos(None, tmp_path_factory.mktemp("fault-photos"), count=8)


def missed(goals: dict[str, bool]) -> list[str]:
    return [goal for goal, met in goals.items() if not met]


def test_model_server_killed_during_load(stack, photos):
    result = faults.model_server_outage(stack, photos, clients=4, down_s=8.0)
    assert sum(result.during.values()) > 0, f"no request ended during the outage: {result}"
    assert missed(faults.outage_expectations(result)) == [], result
    assert result.workers_after == result.workers_before


def test_slow_and_silent_urls_do_not_hold_other_requests(stack, photos):
    with PhotoServer(Path(stack.workdir)) as site:
        result = faults.slow_urls(stack, site, photos, routes=("/slow", "/hang", "/slow"))
    assert len(result.slow) == 3 and len(result.normal) == 8, result
    assert missed(faults.slow_url_expectations(result)) == [], result


def test_killed_gunicorn_worker_is_replaced(stack, photos):
    result = faults.worker_killed(stack, photos, clients=4)
    assert missed(faults.worker_kill_expectations(result)) == [], result
    assert stack.gateway.alive()  # the master itself is still there


def test_broken_new_version_keeps_the_last_good_one(stack, photos):
    result = faults.broken_version(stack, photos, clients=2)
    assert sum(result.served_during.values()) > 0, result
    assert missed(faults.broken_version_expectations(result)) == [], result
    assert str(result.broken_version) in stack.stats().get("failed_versions", {})
