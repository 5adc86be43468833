"""`make load`: N concurrent clients for T seconds against gunicorn + the model server.

    python -m devtools.load [--clients 8] [--seconds 60] [--size 96] [--json out.json]
    python -m devtools.load --concurrency-sweep 1,2,4,8,16 [--sweep-seconds 15]

Starts everything itself on 127.0.0.1 - a freshly exported, untrained model
(tiny by default; `--size 299` for the production input size), the model server
and the gateway under gunicorn - then runs a bounded load: `--clients` threads,
each with its own keep-alive session, uploading real photos for `--seconds`
(and at most `--max-requests` in all). It reports throughput, latency
percentiles, errors and every process's resident memory before and after, and
exits 1 when a goal is missed (any error; RSS growth above `--max-rss-growth`).

`--concurrency-sweep` runs one shorter load per client count and draws latency
percentiles and throughput against concurrency as a PNG.

The processes come from devtools.stack, as in the test-suite, so the load
runs exactly what the tests run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import requests

from devtools.benchlib import MINI_DATA, machine
from devtools.stack import REPO, Gateway, ModelServer, export_untrained_model, rss_kb

MINI_IMAGES = MINI_DATA / "images"
REQUEST_TIMEOUT_S = 60.0
DEFAULT_PLOT = REPO / "docu" / "images" / "latency_vs_concurrency.png"


# -- the bounded load generator ---------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """One request: when it started and ended (monotonic seconds), and how it ended."""

    started: float
    finished: float
    status: int | None  # None: no HTTP answer (connection refused or reset)
    code: str  # the gateway's error code, "" on success, the exception name without answer
    version: int | None = None  # the model version that answered (successes only)

    @property
    def ok(self) -> bool:
        return self.status == 200

    @property
    def seconds(self) -> float:
        return self.finished - self.started


def upload(session: requests.Session, url: str, photo: tuple[str, bytes]) -> Outcome:
    """POST one photo as a multipart upload; never raises."""
    started = time.monotonic()
    try:
        response = session.post(
            url + "/predict", files={"file": (photo[0], photo[1], "image/jpeg")},
            timeout=REQUEST_TIMEOUT_S,
        )  # fmt: skip
    except requests.RequestException as exc:
        return Outcome(started, time.monotonic(), None, type(exc).__name__)
    finished = time.monotonic()
    try:
        body = response.json()
        if response.status_code == 200:
            return Outcome(started, finished, 200, "", int(body["model"]["version"]))
        code = body["error"]["code"]
    except (ValueError, KeyError, TypeError):
        code = "unexpected-body"
    return Outcome(started, finished, response.status_code, code)


@dataclass
class Load:
    """`clients` threads sending photos until `seconds` pass or `max_requests` are sent."""

    url: str
    photos: list[tuple[str, bytes]]
    clients: int = 8
    seconds: float = 60.0
    max_requests: int | None = None
    keep_alive: bool = True  # False: a new connection per request (spreads over workers)
    error_pause: float = 0.0  # a client waits this long after an error (backs off)
    outcomes: list[Outcome] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._sent = 0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def _take(self) -> int | None:
        """The next photo index, or None once the budget (count or time) is spent."""
        with self._lock:
            if self._stop.is_set() or (
                self.max_requests is not None and self._sent >= self.max_requests
            ):
                return None
            self._sent += 1
            return self._sent

    def _client(self) -> None:
        with requests.Session() as session:
            while (n := self._take()) is not None:
                outcome = upload(session, self.url, self.photos[n % len(self.photos)])
                with self._lock:
                    self.outcomes.append(outcome)
                if outcome.status is None or not self.keep_alive:
                    session.close()  # the next request opens a fresh connection
                if not outcome.ok and self.error_pause:
                    self._stop.wait(self.error_pause)

    def start(self) -> Load:
        self.started = time.monotonic()
        self._threads = [
            threading.Thread(target=self._client, name=f"client-{i}", daemon=True)
            for i in range(self.clients)
        ]
        for thread in self._threads:
            thread.start()
        self._timer = threading.Timer(self.seconds, self._stop.set)
        self._timer.daemon = True
        self._timer.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def join(self) -> list[Outcome]:
        for thread in self._threads:
            thread.join(self.seconds + REQUEST_TIMEOUT_S + 5)
        self._stop.set()
        self._timer.cancel()
        self.elapsed = time.monotonic() - self.started
        return sorted(self.outcomes, key=lambda o: o.started)

    def run(self) -> list[Outcome]:
        return self.start().join()


def summarize(outcomes: list[Outcome], elapsed: float) -> dict:
    """Throughput, latency percentiles (of the successful requests) and error counts."""
    ok = np.array([o.seconds for o in outcomes if o.ok]) * 1000
    errors: dict[str, int] = {}
    for o in outcomes:
        if not o.ok:
            key = f"{o.status or 'no answer'} {o.code}".strip()
            errors[key] = errors.get(key, 0) + 1
    p50, p95, p99 = np.percentile(ok, [50, 95, 99]) if len(ok) else (float("nan"),) * 3
    return {
        "requests": len(outcomes),
        "ok": int(len(ok)),
        "errors": sum(errors.values()),
        "errors_by_kind": errors,
        "seconds": round(elapsed, 2),
        "throughput_rps": round(len(ok) / elapsed, 2) if elapsed else 0.0,
        "p50_ms": round(float(p50), 1),
        "p95_ms": round(float(p95), 1),
        "p99_ms": round(float(p99), 1),
        "max_ms": round(float(ok.max()), 1) if len(ok) else float("nan"),
    }


# -- processes and their memory ---------------------------------------------------------


def process_memory(server: ModelServer, gateway: Gateway) -> dict[str, int]:
    """{process name: RSS KiB} for the model server, the gunicorn master and each worker."""
    memory = {"model server": rss_kb(server.pid), "gunicorn master": rss_kb(gateway.pid)}
    for i, pid in enumerate(sorted(gateway.worker_pids())):
        memory[f"gunicorn worker {i + 1} (pid {pid})"] = rss_kb(pid)
    return memory


def load_photos(folder: Path | None, workdir: Path, count: int = 32) -> list[tuple[str, bytes]]:
    """Up to `count` JPEGs: from `folder`, else kitchenware-mini, else synthetic sample data."""
    if folder is None and MINI_IMAGES.is_dir():
        folder = MINI_IMAGES
    if folder is None:
        folder = workdir / "sample"
        subprocess.run(
            [sys.executable, "-m", "kitchenware.cli", "sample-data", str(folder),
             "--per-class", "3", "--test-per-class", "0"],
            check=True, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)),
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        folder = folder / "images"
    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
    if not files:
        raise SystemExit(f"load: no .jpg files in {folder}")
    step = max(1, len(files) // count)
    return [(p.name, p.read_bytes()) for p in files[::step][:count]]


class Stack:
    """A fresh model + model server + gunicorn gateway in a temporary folder."""

    def __init__(self, args, workdir: Path, gateway_env: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.base = workdir / "models" / "kitchenware"
        self.size = args.size
        self.server = ModelServer(self.base, workdir, poll_seconds=1,
                                  batching=not args.no_batching)  # fmt: skip
        env = {"TF_SERVING_HOST": self.server.target, "GRPC_TIMEOUT": str(args.grpc_timeout)}
        env.update(gateway_env or {})
        # gunicorn alone, so the figures stay comparable with the earlier runs in
        # docu/BENCHMARKS.md (behind nginx, clients past workers x threads - 3 get 503s).
        self.gateway = Gateway(workdir, env, workers=args.workers, threads=args.threads,
                               proxy=False)  # fmt: skip
        self.url = self.gateway.url

    def __enter__(self) -> Stack:
        print(f"load: exporting an untrained {self.size}px model to {self.base}", flush=True)
        export_untrained_model(self.base, self.size)
        try:
            self.server.start()
            self.gateway.start()
            self.server.wait_ready(180)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.gateway.stop()
        self.server.stop()


# -- the two modes ----------------------------------------------------------------------


def warm_up(url: str, photos, clients: int, requests_per_client: int = 10) -> None:
    """Concurrent requests on fresh connections, so every gunicorn worker has answered
    several times and the model server has seen many batch shapes before memory is measured
    (first requests import modules and fill caches: that is start-up, not growth)."""
    outcomes = Load(url, photos, clients=clients, seconds=120, keep_alive=False,
                    max_requests=clients * requests_per_client).run()  # fmt: skip
    bad = [o for o in outcomes if not o.ok]
    if bad:
        raise SystemExit(f"load: warm-up failed: {bad[0]}")


def growth(before: dict[str, int], after: dict[str, int]) -> dict[str, dict]:
    table = {}
    for name, kb in before.items():
        if name in after:
            table[name] = {
                "before_mb": round(kb / 1024, 1),
                "after_mb": round(after[name] / 1024, 1),
                "growth_pct": round(100 * (after[name] - kb) / kb, 1),
            }
        else:
            table[name] = {"before_mb": round(kb / 1024, 1), "after_mb": None, "growth_pct": None}
    return table


def run_load(args, stack: Stack, photos) -> dict:
    warm_up(stack.url, photos, args.clients)
    before = process_memory(stack.server, stack.gateway)
    load = Load(stack.url, photos, args.clients, args.seconds, args.max_requests)
    print(
        f"load: {args.clients} clients for {args.seconds:g} s against {stack.url} ...", flush=True
    )
    outcomes = load.run()
    after = process_memory(stack.server, stack.gateway)
    result = summarize(outcomes, load.elapsed)
    result["rss"] = growth(before, after)
    known = [r["growth_pct"] for r in result["rss"].values() if r["growth_pct"] is not None]
    result["max_rss_growth_pct"] = max(known)
    result["workers_replaced"] = any(r["after_mb"] is None for r in result["rss"].values())
    return result


def print_load(result: dict) -> None:
    print(
        f"\nrequests {result['requests']}  ok {result['ok']}  errors {result['errors']} "
        f"{result['errors_by_kind'] or ''}\n"
        f"throughput {result['throughput_rps']} req/s over {result['seconds']} s\n"
        f"latency p50 {result['p50_ms']} ms  p95 {result['p95_ms']} ms  "
        f"p99 {result['p99_ms']} ms  max {result['max_ms']} ms\n"
    )
    print(f"{'process':34} {'RSS before':>11} {'RSS after':>10} {'growth':>8}")
    for name, row in result["rss"].items():
        after = "gone" if row["after_mb"] is None else f"{row['after_mb']} MB"
        grown = "" if row["growth_pct"] is None else f"{row['growth_pct']:+.1f}%"
        print(f"{name:34} {row['before_mb']:>8} MB {after:>10} {grown:>8}")


def run_sweep(args, stack: Stack, photos) -> list[dict]:
    levels = [int(x) for x in args.concurrency_sweep.split(",")]
    warm_up(stack.url, photos, max(levels))
    rows = []
    for clients in levels:
        load = Load(stack.url, photos, clients, args.sweep_seconds, args.max_requests)
        outcomes = load.run()
        row = {"clients": clients, **summarize(outcomes, load.elapsed)}
        rows.append(row)
        print(
            f"  {clients:3d} clients: {row['throughput_rps']:7.2f} req/s  p50 {row['p50_ms']:7.1f}"
            f"  p95 {row['p95_ms']:7.1f}  p99 {row['p99_ms']:7.1f} ms  errors {row['errors']}",
            flush=True,
        )
    return rows


def plot_sweep(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    clients = [r["clients"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for key, label, style in (("p50_ms", "p50", "o-"), ("p95_ms", "p95", "s-"),
                              ("p99_ms", "p99", "^-")):  # fmt: skip
        ax.plot(clients, [r[key] for r in rows], style, label=f"latency {label}")
    ax.set_xscale("log", base=2)
    ax.set_xticks(clients, [str(c) for c in clients])
    ax.set_xlabel("concurrent clients")
    ax.set_ylabel("latency (ms)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    twin = ax.twinx()
    twin.plot(clients, [r["throughput_rps"] for r in rows], "d--", color="grey",
              label="throughput")  # fmt: skip
    twin.set_ylabel("throughput (requests/s)")
    twin.set_ylim(bottom=0)
    lines = ax.get_legend_handles_labels()
    more = twin.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], loc="upper left", fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients")
    parser.add_argument("--seconds", type=float, default=60.0, help="how long the load runs")
    parser.add_argument("--max-requests", type=int, default=None,
                        help="stop after this many requests (per load) even before --seconds")  # fmt: skip
    parser.add_argument("--size", type=int, default=96,
                        help="model input size in pixels (299 is the production size)")  # fmt: skip
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers")
    parser.add_argument("--threads", type=int, default=4, help="threads per gunicorn worker")
    parser.add_argument("--grpc-timeout", type=float, default=30.0, help="gateway GRPC_TIMEOUT")
    parser.add_argument("--no-batching", action="store_true", help="model server without batching")
    parser.add_argument("--photos", type=Path, default=None,
                        help="folder of JPEGs to send (default: kitchenware-mini, else synthetic)")  # fmt: skip
    parser.add_argument("--max-rss-growth", type=float, default=10.0,
                        help="goal: no process grows by more than this many percent")  # fmt: skip
    parser.add_argument("--concurrency-sweep", default=None, metavar="1,2,4,8,16",
                        help="instead of one load: one per client count, and a plot")  # fmt: skip
    parser.add_argument("--sweep-seconds", type=float, default=15.0, help="seconds per sweep step")
    parser.add_argument(
        "--plot", type=Path, default=DEFAULT_PLOT, help="where the sweep's PNG goes"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")


def check_args(args) -> None:
    if args.clients < 1 or args.seconds <= 0 or args.sweep_seconds <= 0:
        raise SystemExit("load: --clients must be >= 1 and --seconds/--sweep-seconds > 0")
    if not 71 <= args.size <= 640:
        raise SystemExit(
            f"load: --size must be 71..640 (Xception's minimum is 71), got {args.size}"
        )
    if args.concurrency_sweep:
        try:
            levels = [int(x) for x in args.concurrency_sweep.split(",")]
        except ValueError:
            raise SystemExit(f"load: --concurrency-sweep {args.concurrency_sweep!r}: "
                             "expected numbers such as 1,2,4,8,16") from None  # fmt: skip
        if not levels or min(levels) < 1 or max(levels) > 256:
            raise SystemExit("load: --concurrency-sweep: client counts must be 1..256")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    check_args(args)
    info = machine()
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    print(f"load: machine {info}", flush=True)
    with tempfile.TemporaryDirectory(prefix="kitchenware-load-") as tmp:
        workdir = Path(tmp)
        photos = load_photos(args.photos, workdir)
        with Stack(args, workdir) as stack:
            if args.concurrency_sweep:
                rows = run_sweep(args, stack, photos)
                title = (f"gateway + model server, {args.size}px model, {args.workers}x"
                         f"{args.threads} gunicorn threads, {info['nproc']} cores ({info['date']})")  # fmt: skip
                plot_sweep(rows, args.plot, title)
                print(f"load: plot written to {args.plot}")
                report = {"machine": info, "settings": settings, "sweep": rows}
                failed = sum(r["errors"] for r in rows) > 0
            else:
                result = run_load(args, stack, photos)
                print_load(result)
                report = {"machine": info, "settings": settings, "load": result}
                failed = (
                    result["errors"] > 0
                    or result["max_rss_growth_pct"] > args.max_rss_growth
                    or result["workers_replaced"]
                )
                print(f"goals: 0 errors -> {result['errors']}; RSS growth <= "
                      f"{args.max_rss_growth:g}% -> max {result['max_rss_growth_pct']:+.1f}%: "
                      f"{'MISSED' if failed else 'met'}")  # fmt: skip
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
        print(f"load: results written to {args.json}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
