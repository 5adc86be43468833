"""gunicorn settings for the gateway: `gunicorn -c gunicorn.conf.py gateway:app`.

Every deployment runs it behind nginx (proxy/nginx.conf.template), which buffers
slow clients, bounds the requests passed here below workers x threads and answers
its own refusals; gunicorn runs its stock gthread worker.

Workers, threads and timeouts come from the environment so compose and
Kubernetes can tune them without a rebuild. Prometheus runs in multiprocess
mode: each worker writes its samples to files in PROMETHEUS_MULTIPROC_DIR and
/metrics sums them, so counts are right whichever worker answers the scrape.
"""

import os
import shutil
import tempfile
from pathlib import Path

# No sys.path edit: gunicorn puts its working folder on sys.path before it reads this
# file, and kitchenware is installed wherever the gateway runs (image, venvs).
from kitchenware.core.errors import KitchenwareError
from kitchenware.gateway.config import ServerSettings, Settings

try:
    _server = ServerSettings.from_env()  # PORT, GUNICORN_BIND, GUNICORN_WORKERS, ...
except KitchenwareError as exc:
    raise SystemExit(f"gateway configuration error: {exc}") from None

bind = _server.address
workers = _server.workers
# gthread: a worker waiting on a URL download or the model server still serves its
# other threads.
worker_class = "gthread"
threads = _server.threads
# A worker whose threads are all busy accepts no more connections, so the kernel hands
# the next one (a probe, in the threads the proxy keeps free) to a worker with a free
# thread instead of queueing it behind busy ones.
worker_connections = threads
timeout = _server.timeout
graceful_timeout = _server.graceful_timeout
# The proxy asks for `Connection: close`; no connection waits here between requests.
keepalive = 0
# The proxy refuses oversized request lines and heads first (414/431 in JSON); these
# are set above its limits so gunicorn never answers one of its own HTML error pages.
limit_request_line = 0
limit_request_fields = 32768
limit_request_field_size = 0
# X-Forwarded-For/-Proto are honoured from these addresses only (gunicorn's own
# FORWARDED_ALLOW_IPS variable; default: the proxy beside it on 127.0.0.1).
forwarded_allow_ips = _server.forwarded_allow_ips
accesslog = "-"
# The client's address as the proxy saw it comes first.
access_log_format = '%({x-forwarded-for}i)s via %(h)s "%(r)s" %(s)s %(b)s %(M)sms'
errorlog = "-"
loglevel = _server.log_level
# gunicorn >= 24 opens a control socket at one fixed path per user; several gateways
# (tests, benchmarks) on one machine would fight over it, and we do not use it.
control_socket_disable = True
# Workers import the app after the fork: gRPC channels must not cross a fork.
preload_app = False

# Must be set before any worker imports prometheus_client.
_own_metrics_dir = not os.environ.get("PROMETHEUS_MULTIPROC_DIR")
if _own_metrics_dir:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="kitchenware-metrics-")


def on_starting(server):
    """Fail fast, with one clear line, on bad settings; start metrics from zero."""
    try:
        Settings.from_env()
    except KitchenwareError as exc:
        server.log.error("gateway configuration error: %s", exc)
        raise SystemExit(f"gateway configuration error: {exc}") from None
    metrics_dir = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    metrics_dir.mkdir(parents=True, exist_ok=True)
    for stale in metrics_dir.glob("*.db"):
        stale.unlink()


def post_fork(server, worker):
    # Freed decode buffers go back to the OS (see the function), in each worker.
    from kitchenware.gateway.budget import return_freed_memory_to_the_os

    return_freed_memory_to_the_os()


def child_exit(server, worker):
    """Drop a dead worker's live samples (counters and histograms are kept)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    if _own_metrics_dir:
        shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)
