"""Gateway benchmarks, each measured side by side in one run and printed as JSON.

    python -m devtools.bench_gateway e2e      # upload via gateway + model server vs in-process
    python -m devtools.bench_gateway memory   # gateway worker RSS, .venv-gateway install size
    python -m devtools.bench_gateway draft    # 12-Mpx JPEG decode+resize: draft mode vs plain
    python -m devtools.bench_gateway all      # the three above

e2e exports an untrained Xception (weights none: timing does not depend on the
weights) at --size, starts `kitchenware model-server` and the gunicorn gateway
on 127.0.0.1 (in `.venv-gateway` when built), and times one photo, batch 1,
alternating: an HTTP multipart upload to POST /predict, and the same work in
this process (`load_image` + the SavedModel's `serving_default`). The memory
figures come from the same gateway's worker after those requests.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

from devtools.benchlib import MINI_DATA, cpu_model
from devtools.stack import (
    GATEWAY_VENV_PYTHON,
    REPO,
    ServingStack,
    export_untrained_model,
    peak_rss_kb,
    rss_kb,
)
from kitchenware.core.contract import DEFAULT_IMAGE_SIZE, SIGNATURE

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
GATEWAY_VENV = GATEWAY_VENV_PYTHON.parents[1]
# TensorFlow's worker threads spin for a while after a call; a pause between the two
# sides keeps one process's spinning threads from slowing the other's call.
SETTLE_S = 0.2


def machine() -> dict:
    return {"nproc": os.cpu_count(), "cpu": cpu_model(), "date": date.today().isoformat()}


def sample_photo() -> bytes:
    """A real photo from kitchenware-mini when present, else a synthetic 640x480 JPEG."""
    photos = sorted((MINI_DATA / "images").glob("*.jpg"))
    if photos:
        return photos[0].read_bytes()
    import numpy as np

    from kitchenware.core.images import encode_jpeg

    y, x = np.mgrid[0:480, 0:640]
    pixels = np.stack([x % 256, y % 256, (x + y) % 256], axis=-1).astype(np.uint8)
    return encode_jpeg(pixels)


# -- e2e + memory --------------------------------------------------------------------


def e2e_and_memory(
    size: int, repeats: int, do_e2e: bool = True, server_args: list[str] | None = None
) -> dict:
    import numpy as np
    import requests
    import tensorflow as tf

    from kitchenware.core.images import load_image

    photo = sample_photo()
    workdir = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    try:
        base = workdir / "kitchenware"
        # In a child process: building a Keras model here would slow this process's later
        # SavedModel calls (measured 2x), which would flatter the gateway.
        export_untrained_model(base, size)
        serve = tf.saved_model.load(str(base / "1")).signatures[SIGNATURE]

        def in_process() -> np.ndarray:
            pixels = load_image(photo, size=size)[np.newaxis]
            return serve(image=tf.constant(pixels))["probabilities"].numpy()

        stack = ServingStack(base, workers=1, log_dir=workdir, server_args=server_args)
        with stack, requests.Session() as session:
            stack.wait_ready()

            def through_gateway() -> dict:
                response = session.post(stack.url + "/predict", files={"file": ("p.jpg", photo)})
                response.raise_for_status()
                return response.json()

            for _ in range(3):  # warm-up: graph tracing, connections, metadata
                in_process()
                through_gateway()
            local, remote = [], []
            for _ in range(repeats if do_e2e else 0):  # alternate, so load changes hit both
                time.sleep(SETTLE_S)
                started = time.perf_counter()
                in_process()
                local.append(time.perf_counter() - started)
                time.sleep(SETTLE_S)
                started = time.perf_counter()
                through_gateway()
                remote.append(time.perf_counter() - started)
            # A few large uploads too, so the worker's RSS reflects real photo sizes.
            big = _big_jpeg(photo)
            for _ in range(5):
                session.post(stack.url + "/predict", files={"file": ("big.jpg", big)})
            rss = {pid: (rss_kb(pid), peak_rss_kb(pid)) for pid in stack.gateway.worker_pids()}
            gateway_python = stack.gateway.gunicorn.python
        result: dict = {}
        if do_e2e:
            result["e2e"] = {
                "size": size,
                "repeats": repeats,
                "in_process_ms_median": round(1000 * statistics.median(local), 1),
                "gateway_ms_median": round(1000 * statistics.median(remote), 1),
                "ratio": round(statistics.median(remote) / statistics.median(local), 3),
                "goal": "<= 1.15",
            }
        result["memory"] = {
            "gateway_python": str(Path(gateway_python).relative_to(REPO))
            if gateway_python == str(GATEWAY_VENV_PYTHON)
            else "this interpreter (no .venv-gateway)",
            "worker_rss_mb": [round(now / 1024, 1) for now, _ in rss.values()],
            "worker_peak_rss_mb": [round(peak / 1024, 1) for _, peak in rss.values()],
            "goal_rss_mb": "<= 150",
            **install_size(),
        }
        return result
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _big_jpeg(photo: bytes) -> bytes:
    import numpy as np
    from PIL import Image

    # Upscaled, plus sensor-like noise so the file is as busy as a real 12-Mpx photo.
    img = Image.open(io.BytesIO(photo)).convert("RGB").resize((4000, 3000))
    noise = np.random.default_rng(0).normal(0, 6, (3000, 4000, 3))
    img = Image.fromarray(np.clip(np.asarray(img) + noise, 0, 255).astype(np.uint8))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def install_size() -> dict:
    site = sorted(GATEWAY_VENV.glob("lib/python*/site-packages"))
    if not site:
        return {"install_mb": None, "install_note": "no .venv-gateway (run make gateway-venv)"}
    out = subprocess.run(["du", "-sk", str(site[0])], capture_output=True, text=True, check=True)
    return {
        "install_mb": round(int(out.stdout.split()[0]) / 1024, 1),
        "install_what": ".venv-gateway site-packages (requirements/gateway.txt + "
        "tensorflow-serving-api --no-deps + kitchenware)",
        "goal_install_mb": "<= 200",
    }


# -- draft mode ---------------------------------------------------------------------


def draft(repeats: int, size: int = DEFAULT_IMAGE_SIZE) -> dict:
    from PIL import Image, ImageOps

    from kitchenware.core.images import RESAMPLE, load_image

    big = _big_jpeg(sample_photo())

    def plain():
        with Image.open(io.BytesIO(big)) as img:
            img.load()
            img = ImageOps.exif_transpose(img).convert("RGB")
            return img.resize((size, size), RESAMPLE)

    def drafted():
        return load_image(big, size=size)

    plain()
    drafted()
    t_plain, t_draft = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        plain()
        t_plain.append(time.perf_counter() - started)
        started = time.perf_counter()
        drafted()
        t_draft.append(time.perf_counter() - started)
    return {
        "draft": {
            "image": "4000x3000 JPEG (12 Mpx, a mini-data photo upscaled + noise), resized to 299x299",
            "jpeg_kb": round(len(big) / 1024),
            "plain_ms_median": round(1000 * statistics.median(t_plain), 1),
            "draft_ms_median": round(1000 * statistics.median(t_draft), 1),
            "speedup": round(statistics.median(t_plain) / statistics.median(t_draft), 2),
            "goal": ">= 3",
        }
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("what", nargs="?", default="all", choices=["e2e", "memory", "draft", "all"])
    parser.add_argument("--size", type=int, default=DEFAULT_IMAGE_SIZE, help="model input size")
    parser.add_argument("--repeats", type=int, default=30, help="timed requests per side")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    parser.add_argument(
        "--no-batching",
        action="store_true",
        help="start the model server with --no-batching (a lone request then skips the batch wait)",
    )
    args = parser.parse_args(argv)
    result = {"command": "python -m devtools.bench_gateway " + " ".join(argv or sys.argv[1:])}
    result["machine"] = machine()
    if args.what in ("e2e", "memory", "all"):
        server_args = ["--no-batching"] if args.no_batching else []
        result.update(e2e_and_memory(args.size, args.repeats, args.what != "memory", server_args))
    if args.what in ("draft", "all"):
        result.update(draft(max(5, args.repeats // 3)))
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
