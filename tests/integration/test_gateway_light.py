"""The gateway tier stays free of TensorFlow (small image, fast start, small workers).

With `.venv-gateway` (built by `make test` from requirements/gateway.txt) the
check runs where the gateway is deployed: importing the app must not put
`tensorflow` in sys.modules, and even after the gRPC client is loaded only the
TensorFlow *protos* (the tensorflow-protobuf package) may be present, never the
TensorFlow library. Without it, the main environment proves the gateway's own
modules import nothing from TensorFlow.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from support.paths import REPO

from devtools.stack import GATEWAY_VENV_PYTHON

CHECK = r"""
import json, sys
import gateway  # the gunicorn entry point: builds the app from the environment
after_import = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras"))
gateway.app.test_client().get("/readyz")  # loads the gRPC client (no server: 503)
import kitchenware.serving.grpc_client
library = sorted(m for m in sys.modules
                 if m.startswith(("tensorflow.python", "tensorflow.compiler", "keras")))
rss_kb = int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0])
print(json.dumps({"after_import": after_import, "library": library, "rss_kb": rss_kb}))
"""


@pytest.mark.skipif(
    not GATEWAY_VENV_PYTHON.is_file(), reason="no .venv-gateway (make gateway-venv)"
)
def test_gateway_venv_never_loads_tensorflow():
    proc = subprocess.run(
        [str(GATEWAY_VENV_PYTHON), "-c", CHECK],
        cwd=REPO,
        env={
            "PATH": "/usr/bin:/bin",
            "PYTHONPATH": str(REPO),
            "TF_SERVING_HOST": "127.0.0.1:1",
            "GRPC_TIMEOUT": "1",
        },  # fmt: skip
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    assert found["after_import"] == []
    assert found["library"] == []
    assert found["rss_kb"] < 150 * 1024


def test_importing_the_gateway_package_loads_no_tensorflow_here():
    code = (
        "import sys, kitchenware.gateway as g; g.create_app(); print('tensorflow' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                          timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"
