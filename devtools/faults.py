"""`make faults`: break the running stack on purpose, under load, and report what clients saw.

    python -m devtools.faults [--size 96] [--outage 5] [--json out.json]

Four scenarios, each against real processes on 127.0.0.1 (model server, gunicorn
gateway with 2 workers, a local web server for URL inputs):

1. model-server outage: SIGKILL the model server during a load, restart it later;
   the gateway answers 503 meanwhile, no gunicorn worker dies, and it answers 200
   again by itself (same workers, no gateway restart);
2. slow URLs: URLs that trickle bytes or never answer are cut off by the fetch
   timeout, and uploads sent meanwhile are answered before any of them ends;
3. gunicorn worker SIGKILL during a load: the master starts a replacement and the
   service goes on (only the requests in flight on the killed worker fail);
4. broken new version: a version folder that is not a SavedModel appears; the
   model server keeps serving the last good version and says why (log + stats
   file); the next good version is picked up.

Each scenario returns its observations and `expectations(...)` turns them into
named goals; `tests/integration/test_faults.py` runs the same functions and asserts every goal.
Exit code 1 when a goal is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import requests

from devtools.benchlib import machine
from devtools.load import Load, Outcome, load_photos
from devtools.stack import (
    Gateway,
    ModelServer,
    PhotoServer,
    StackError,
    export_untrained_model,
    wait_for,
)

READY_TIMEOUT_S = 180.0
# A client that gets an error waits this long before its next request (as real clients
# back off), so a fast stream of 503s does not starve the restarting model server of CPU.
ERROR_PAUSE_S = 0.1


class FaultStack:
    """Model server (with a stats file) + gunicorn gateway that may fetch 127.0.0.1 URLs."""

    def __init__(self, base: Path, workdir: Path, workers: int = 2, threads: int = 4,
                 fetch_timeout: float = 4.0, grpc_timeout: float = 10.0,
                 gateway_pythonpath: tuple[str, ...] = ()) -> None:  # fmt: skip
        self.base = Path(base)
        self.workdir = Path(workdir)
        self.server = ModelServer(self.base, self.workdir, poll_seconds=0.5)
        env = {
            "TF_SERVING_HOST": self.server.target,
            "GRPC_TIMEOUT": str(grpc_timeout),
            # URL inputs come from a local web server in these scenarios only.
            "ALLOW_PRIVATE_URLS": "true",
            "URL_FETCH_TIMEOUT": str(fetch_timeout),
        }
        # gunicorn alone: these scenarios measure the gateway and model server behind
        # it (a killed worker, a dead model); nginx would turn lost requests into 502s.
        self.gateway = Gateway(self.workdir, env, workers=workers, threads=threads,
                               pythonpath=gateway_pythonpath, proxy=False)  # fmt: skip
        self.workers = workers
        self.threads = threads
        self.fetch_timeout = fetch_timeout
        self.url = self.gateway.url

    def start(self) -> FaultStack:
        try:
            self.server.start()
            self.gateway.start()
            self.server.wait_ready(READY_TIMEOUT_S)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        self.gateway.stop()
        self.server.stop()

    def stats(self) -> dict:
        return self.server.stats()

    def __enter__(self) -> FaultStack:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _codes(outcomes: list[Outcome]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for o in outcomes:
        key = str(o.status) if o.status is not None else f"no answer ({o.code})"
        counts[key] = counts.get(key, 0) + 1
    return counts


def _load(stack: FaultStack, photos, clients: int, seconds: float = 600.0) -> Load:
    return Load(stack.url, photos, clients=clients, seconds=seconds, error_pause=ERROR_PAUSE_S)


def _wait_until_ok_after(load: Load, moment: float, count: int, timeout: float) -> float:
    """Wait until `count` successful requests started after `moment`; when the first ended."""

    def enough():
        ok = [o for o in list(load.outcomes) if o.ok and o.started > moment]
        return min(o.finished for o in ok) if len(ok) >= count else None

    return wait_for(enough, timeout, f"{count} answers after the fault", interval=0.2)


# -- 1. model server outage -------------------------------------------------------------


# The gateway client's max reconnect backoff (2 s, grpc_client.channel_options) plus
# gRPC's 20 % jitter: by then every worker's channel has found a reopened port.
RECONNECT_WINDOW_S = 2.5


@dataclass
class OutageResult:
    outage_s: float  # from the kill until the restarted server reported SERVING
    before: dict[str, int]  # status counts of requests that ended before the kill
    during: dict[str, int]  # ... that started after the kill and ended before the restart
    after: dict[str, int]  # ... that started RECONNECT_WINDOW_S after the first 200 after it
    error_codes_during: dict[str, int]
    error_answer_s: tuple[float, float]  # median and max time to a 503 during the outage
    recovered_after_s: float  # restarted server ready -> first 200
    workers_before: list[int]
    workers_after: list[int]
    master_alive: bool


def model_server_outage(stack: FaultStack, photos, clients: int = 4,
                        down_s: float = 8.0, settle_s: float = 2.0) -> OutageResult:  # fmt: skip
    """`down_s` must exceed twice the client's retry chain (~3 s) for answers to end while the
    server is certainly down; the outage as clients see it also includes the restart."""
    workers_before = sorted(stack.gateway.worker_pids())
    load = _load(stack, photos, clients).start()
    try:
        time.sleep(settle_s)
        killed = time.monotonic()
        stack.server.stop(signal.SIGKILL)
        time.sleep(down_s)
        restarted = time.monotonic()
        stack.server.start()
        stack.server.wait_ready(READY_TIMEOUT_S)
        ready = time.monotonic()
        first_ok = _wait_until_ok_after(load, ready, 1, 60)
        # The restarted server opens its port only once ready (as TF Serving does); each
        # gateway worker's channel tries it again within its reconnect backoff.
        time.sleep(RECONNECT_WINDOW_S)
        recovered = time.monotonic()
        time.sleep(settle_s)
    finally:
        load.stop()
        outcomes = load.join()
    failed = [o for o in outcomes if killed < o.started < ready and not o.ok]
    return OutageResult(
        outage_s=round(ready - killed, 2),
        before=_codes([o for o in outcomes if o.finished < killed]),
        during=_codes([o for o in outcomes if o.started > killed and o.finished < restarted]),
        after=_codes([o for o in outcomes if o.started > recovered]),
        error_codes_during=_error_codes(failed),
        error_answer_s=(
            round(statistics.median(o.seconds for o in failed), 2) if failed else 0.0,
            round(max(o.seconds for o in failed), 2) if failed else 0.0,
        ),
        recovered_after_s=round(first_ok - ready, 2),
        workers_before=workers_before,
        workers_after=sorted(stack.gateway.worker_pids()),
        master_alive=stack.gateway.alive(),
    )


def _error_codes(outcomes: list[Outcome]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for o in outcomes:
        if not o.ok:
            key = f"{o.status} {o.code}"
            counts[key] = counts.get(key, 0) + 1
    return counts


def outage_expectations(r: OutageResult) -> dict[str, bool]:
    statuses = set(r.before) | set(r.during) | set(r.after)
    return {
        "all 200 before the kill": set(r.before) == {"200"},
        "503 model_unavailable during the outage": set(r.during) == {"503"}
        and set(r.error_codes_during) <= {"503 model_unavailable"},
        "only 200 or 503, never a 500, 502 or a dropped connection": statuses <= {"200", "503"},
        "all 200 after recovery (no gateway restart)": set(r.after) == {"200"},
        "no gunicorn worker died": r.workers_before == r.workers_after and r.master_alive,
    }


# -- 2. slow and silent URLs ------------------------------------------------------------


@dataclass
class SlowUrlResult:
    slow: list[tuple[str, int | None, str]]  # (route, status, error code) of each slow URL
    normal: list[int | None]  # statuses of the uploads sent while the slow ones were pending
    normal_done_while_slow_pending: bool
    slow_seconds: list[float]
    fetch_timeout_s: float


def slow_urls(stack: FaultStack, site: PhotoServer, photos,
              routes: tuple[str, ...] = ("/slow", "/hang", "/slow"), uploads: int = 8) -> SlowUrlResult:  # fmt: skip
    hits = site.hits
    slow_results: list[tuple[str, Outcome]] = []
    lock = threading.Lock()

    def fetch(route: str) -> None:
        started = time.monotonic()
        try:
            response = requests.post(stack.url + "/predict", json={"url": site.url + route},
                                     timeout=stack.fetch_timeout + 60)  # fmt: skip
            status, code = response.status_code, _json_code(response)
        except requests.RequestException as exc:
            status, code = None, type(exc).__name__
        with lock:
            slow_results.append((route, Outcome(started, time.monotonic(), status, code)))

    threads = [threading.Thread(target=fetch, args=(r,), daemon=True) for r in routes]
    for thread in threads:
        thread.start()
    # Every slow request has reached the web server: each now holds a gateway thread.
    wait_for(lambda: site.hits >= hits + len(routes), 30, "the slow URLs to be requested")
    normal = Load(stack.url, photos, clients=2, seconds=60, max_requests=uploads).run()
    with lock:
        pending = len(slow_results) == 0
    for thread in threads:
        thread.join(stack.fetch_timeout + 60)
    return SlowUrlResult(
        slow=[(route, o.status, o.code) for route, o in slow_results],
        normal=[o.status for o in normal],
        normal_done_while_slow_pending=pending,
        slow_seconds=[round(o.seconds, 2) for _, o in slow_results],
        fetch_timeout_s=stack.fetch_timeout,
    )


def _json_code(response: requests.Response) -> str:
    if response.status_code == 200:
        return ""
    try:
        return response.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return "not-json"


def slow_url_expectations(r: SlowUrlResult) -> dict[str, bool]:
    return {
        "every upload answered 200 while slow URLs were pending": r.normal
        and set(r.normal) == {200},
        "all uploads finished before any slow URL did": r.normal_done_while_slow_pending,
        "slow URLs cut off with 502 fetch_failed": len(r.slow) > 0
        and all(status == 502 and code == "fetch_failed" for _, status, code in r.slow),
    }


# -- 3. a gunicorn worker killed --------------------------------------------------------


@dataclass
class WorkerKillResult:
    killed_pid: int
    workers_before: list[int]
    workers_after: list[int]
    respawn_s: float
    codes: dict[str, int]
    failed_in_flight: int  # requests without an answer (on the killed worker's connections)
    after: dict[str, int]  # requests that started once the replacement was up
    clients: int


def worker_killed(stack: FaultStack, photos, clients: int = 4,
                  settle_s: float = 2.0) -> WorkerKillResult:  # fmt: skip
    before = sorted(stack.gateway.worker_pids())
    load = _load(stack, photos, clients).start()
    try:
        time.sleep(settle_s)
        victim = before[0]
        killed = time.monotonic()
        os.kill(victim, signal.SIGKILL)

        def replaced():
            now = stack.gateway.worker_pids()
            return len(now) == len(before) and victim not in now

        wait_for(replaced, 60, "gunicorn to replace the killed worker", interval=0.05)
        respawned = time.monotonic()
        # The replacement imports the app; give it a moment, then every request must succeed.
        _wait_until_ok_after(load, respawned, clients, 60)
        steady = time.monotonic()
        time.sleep(settle_s)
    finally:
        load.stop()
        outcomes = load.join()
    return WorkerKillResult(
        killed_pid=victim,
        workers_before=before,
        workers_after=sorted(stack.gateway.worker_pids()),
        respawn_s=round(respawned - killed, 2),
        codes=_codes(outcomes),
        failed_in_flight=sum(o.status is None for o in outcomes),
        after=_codes([o for o in outcomes if o.started > steady]),
        clients=clients,
    )


def worker_kill_expectations(r: WorkerKillResult) -> dict[str, bool]:
    return {
        "the master replaced the worker": len(r.workers_after) == len(r.workers_before)
        and r.killed_pid not in r.workers_after,
        "no HTTP error answer at all (only 200)": {k for k in r.codes if k.isdigit()} == {"200"},
        "at most one lost request per client connection": r.failed_in_flight <= r.clients,
        "every request after the replacement succeeded": set(r.after) == {"200"},
    }


# -- 4. a broken new version ------------------------------------------------------------


@dataclass
class BrokenVersionResult:
    broken_version: int
    served_during: dict[str, int]  # model version (from the answers) -> count, under load
    codes: dict[str, int]
    failure_reason: str  # from the model server's stats file
    log_says_why: bool
    ready_during: bool
    serving_versions: list[int]
    next_good_version_served: bool


def broken_version(stack: FaultStack, photos, clients: int = 2,
                   settle_s: float = 2.0) -> BrokenVersionResult:  # fmt: skip
    versions = sorted(int(p.name) for p in stack.base.iterdir() if p.name.isdigit())
    good, broken = versions[-1], versions[-1] + 1
    load = _load(stack, photos, clients).start()
    try:
        time.sleep(settle_s / 2)
        staging = stack.base / f".{broken}-staging"
        staging.mkdir()
        (staging / "saved_model.pb").write_bytes(b"this is not a SavedModel")
        (staging / "variables").mkdir()
        staging.rename(stack.base / str(broken))  # appears at once, as an export does

        def failure():
            return stack.stats().get("failed_versions", {}).get(str(broken))

        reason = wait_for(failure, 60, f"the model server to report version {broken}")
        ready = requests.get(stack.url + "/readyz", timeout=10).status_code == 200
        time.sleep(settle_s)
    finally:
        load.stop()
        outcomes = load.join()
    served: dict[str, int] = {}
    for o in outcomes:
        if o.ok:
            served[str(o.version)] = served.get(str(o.version), 0) + 1
    serving = stack.stats().get("serving_versions", [])
    # Then a good version arrives: it is served (the broken one does not block the folder).
    shutil.copytree(stack.base / str(good), stack.base / f".{broken + 1}-staging")
    (stack.base / f".{broken + 1}-staging").rename(stack.base / str(broken + 1))

    def next_version():
        response = requests.post(stack.url + "/predict", timeout=30,
                                 files={"file": (photos[0][0], photos[0][1], "image/jpeg")})  # fmt: skip
        return response.status_code == 200 and response.json()["model"]["version"] == broken + 1

    try:
        wait_for(next_version, 90, f"answers from version {broken + 1}", interval=0.5)
        next_ok = True
    except StackError:
        next_ok = False
    return BrokenVersionResult(
        broken_version=broken,
        served_during=served,
        codes=_codes(outcomes),
        failure_reason=str(reason),
        log_says_why=f"version {broken} of kitchenware NOT loaded" in stack.server.log(),
        ready_during=ready,
        serving_versions=serving,
        next_good_version_served=next_ok,
    )


def broken_version_expectations(r: BrokenVersionResult) -> dict[str, bool]:
    return {
        "every request answered 200": set(r.codes) == {"200"},
        "the last good version kept serving": set(r.served_during) == {str(r.broken_version - 1)}
        and r.broken_version not in r.serving_versions,
        "the stats file says why": "saved_model" in r.failure_reason.lower()
        or "savedmodel" in r.failure_reason.lower(),
        "the log says why": r.log_says_why,
        "/readyz stayed 200": r.ready_during,
        "the next good version is served": r.next_good_version_served,
    }


# -- the script -------------------------------------------------------------------------


@dataclass
class Report:
    machine: dict
    settings: dict
    scenarios: dict = field(default_factory=dict)
    goals: dict = field(default_factory=dict)


def run_all(stack: FaultStack, site: PhotoServer, photos, outage_s: float) -> Report:
    report = Report(machine(), {"workers": stack.workers, "threads": stack.threads,
                                "fetch_timeout_s": stack.fetch_timeout, "outage_s": outage_s})  # fmt: skip
    steps = (
        ("model server killed and restarted under load",
         lambda: model_server_outage(stack, photos, down_s=outage_s), outage_expectations),
        ("slow and silent URLs", lambda: slow_urls(stack, site, photos), slow_url_expectations),
        ("gunicorn worker SIGKILL under load",
         lambda: worker_killed(stack, photos), worker_kill_expectations),
        ("broken new model version under load",
         lambda: broken_version(stack, photos), broken_version_expectations),
    )  # fmt: skip
    for name, scenario, expectations in steps:
        print(f"\n== {name}", flush=True)
        result = scenario()
        goals = expectations(result)
        report.scenarios[name] = asdict(result)
        report.goals[name] = goals
        for key, value in asdict(result).items():
            print(f"   {key}: {value}")
        for goal, met in goals.items():
            print(f"   [{'met' if met else 'MISSED'}] {goal}")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=96, help="model input size in pixels")
    parser.add_argument("--outage", type=float, default=8.0,
                        help="seconds the model server stays dead before the restart begins")  # fmt: skip
    parser.add_argument("--fetch-timeout", type=float, default=4.0, help="URL_FETCH_TIMEOUT")
    parser.add_argument("--photos", type=Path, default=None, help="folder of JPEGs to send")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="kitchenware-faults-") as tmp:
        workdir = Path(tmp)
        photos = load_photos(args.photos, workdir)
        base = workdir / "models" / "kitchenware"
        print(f"faults: exporting an untrained {args.size}px model", flush=True)
        export_untrained_model(base, args.size)
        site_root = workdir / "site"
        site_root.mkdir()
        with FaultStack(base, workdir, fetch_timeout=args.fetch_timeout) as stack, \
                PhotoServer(site_root) as site:  # fmt: skip
            report = run_all(stack, site, photos, args.outage)
    missed = [
        f"{s}: {g}" for s, goals in report.goals.items() for g, met in goals.items() if not met
    ]
    print("\nfaults: " + ("every goal met" if not missed else "MISSED:\n  " + "\n  ".join(missed)))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(asdict(report), indent=2, default=str))
        print(f"faults: results written to {args.json}")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
