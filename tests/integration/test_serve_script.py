"""`make serve` (devtools.serve): both processes start, answer, and stop on Ctrl-C / SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from support.paths import REPO

from devtools.stack import children, free_port, wait_for

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_serve_starts_both_and_stops_them_cleanly(exported_model, tmp_path, sig):
    port, grpc_port = free_port(), free_port()
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "devtools.serve", "--model-base-path", str(exported_model),
         "--port", str(port), "--grpc-port", str(grpc_port), "--workers", "1"],
        cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
    )  # fmt: skip
    try:
        wait_for(
            lambda: "serve: ready." in (tmp_path / "serve.log").read_text(), 180, "serve ready"
        )
        started = children(proc.pid)
        assert len(started) == 2  # model server + gunicorn master
        ready = requests.get(f"http://127.0.0.1:{port}/readyz", timeout=10)
        assert ready.status_code == 200 and "version 1" in ready.json()["reason"]
        proc.send_signal(sig)
        assert proc.wait(60) == 0
        time.sleep(0.2)
        alive = [pid for pid in started if Path(f"/proc/{pid}").exists()
                 and "zombie" not in Path(f"/proc/{pid}/status").read_text()]  # fmt: skip
        assert alive == []
        out = (tmp_path / "serve.log").read_text()
        assert f"web page  http://127.0.0.1:{port}/" in out
        assert "stopped the gateway and the model server" in out
        assert "Traceback" not in out
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
