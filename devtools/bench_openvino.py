"""The model server on OpenVINO vs on TensorFlow, side by side in one run.

    python -m devtools.bench_openvino [--model RUN/best.keras] [--size 150] [--clients 8]

Without --model it trains the pretrained recipe first (kitchenware-mini prep,
ImageNet Xception weights from `kitchenware weights fetch`, frozen backbone,
--epochs, cached features) into --workdir and reuses it on the next run. Then,
on one export (SavedModel + IR), it measures:
- TF in-process `serving_default`, batch 32, one call at a time (the old limit);
- the model server with --backend tensorflow and --backend openvino (the latter in
  .venv-model, without TensorFlow, as in its image): --clients concurrent gRPC
  clients sending one-image Predicts; batch-1 latency (one client); cold start to
  ready; RSS after the burst;
- the gateway end to end (gunicorn, --clients clients uploading real photos);
- accuracy and top-1 agreement of the IR with TensorFlow on kitchenware-mini's
  test split (test_labels.csv) and on the prep's val split.
Prints the CPU model and flags with every figure and writes WORKDIR/report.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from devtools.bench_serving import offline_throughput, served_throughput
from devtools.benchlib import MINI_DATA, machine, run_in_threads
from devtools.stack import REPO, ModelServer, ServingStack, rss_kb
from kitchenware.core.contract import SIGNATURE
from kitchenware.model_server.openvino_runtime import PRECISION_ENV

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# (name in the report, --backend, OPENVINO_INFERENCE_PRECISION): OpenVINO's own choice
# (bf16 on CPUs with AVX-512 BF16 or AMX) and f32 (TensorFlow's answers, the AVX2-class figure).
RUNS = (("tensorflow", "tensorflow", None), ("openvino", "openvino", None),
        ("openvino_f32", "openvino", "f32"))  # fmt: skip
CPU_FLAGS = ("amx_bf16", "amx_int8", "avx512_bf16", "avx512_vnni", "avx512f", "avx2")


def cpu_flags() -> list[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            present = set(line.split(":", 1)[1].split())
            return [f for f in CPU_FLAGS if f in present]
    return []


def kitchenware(*args: str) -> None:
    """A `kitchenware` command in a child process (Keras there would slow TF here)."""
    subprocess.run([sys.executable, "-m", "kitchenware.cli", *args], check=True, cwd=REPO)


def trained_model(workdir: Path, size: int, epochs: int) -> Path:
    """The pretrained recipe on kitchenware-mini, trained once into WORKDIR/run."""
    best = workdir / "run" / "best.keras"
    if best.is_file():
        return best
    prep = workdir / "prep"
    if not prep.is_dir():
        kitchenware("prep", "--data", str(MINI_DATA), "--out", str(prep), "--no-progress")
    weights = subprocess.run(
        [sys.executable, "-m", "kitchenware.cli", "weights", "fetch"],
        check=True, capture_output=True, text=True, cwd=REPO,
    ).stdout.strip().splitlines()[-1]  # fmt: skip
    kitchenware("train", "--data", str(prep), "--out", str(workdir / "run"), "--size", str(size),
                "--weights", weights, "--epochs", str(epochs), "--cached-features",
                "--no-augment", "--fine-tune-epochs", "0", "--verbose", "2")  # fmt: skip
    return best


def labelled_photos(workdir: Path) -> dict[str, list[tuple[Path, str]]]:
    """(photo, label) of kitchenware-mini's test split and of the prep's val split."""
    test = []
    with open(MINI_DATA / "test_labels.csv", newline="") as stream:
        for row in csv.DictReader(stream):
            test.append((MINI_DATA / "images" / f"{row['Id']}.jpg", row["label"]))
    val = [(p, p.parent.name) for p in sorted((workdir / "prep" / "val").glob("*/*.jpg"))]
    return {"test": test, "val": val}


def agreement(version_dir: Path, size: int, photos: dict, precision: str | None) -> dict:
    """Accuracy of both runtimes and how often their top-1 agrees, per split."""
    import numpy as np
    import tensorflow as tf

    from kitchenware.core.images import load_image
    from kitchenware.core.labels import CLASSES
    from kitchenware.model_server.servables import LoadedVersion

    serve = tf.saved_model.load(str(version_dir)).signatures[SIGNATURE]
    with precision_env(precision):
        ir = LoadedVersion(version_dir, 1, backend="openvino")
    result = {"precision": ir.backend_detail.get("precision")}
    try:
        for split, rows in photos.items():
            pixels = np.stack([load_image(p, size=size) for p, _ in rows])
            labels = np.array([CLASSES.index(label) for _, label in rows])
            tf_probs = np.concatenate(
                [
                    serve(image=tf.constant(pixels[i : i + 32]))["probabilities"].numpy()
                    for i in range(0, len(pixels), 32)
                ]
            )
            ov_probs = ir.signatures[SIGNATURE].run({"image": pixels})["probabilities"]
            tf_top, ov_top = tf_probs.argmax(1), ov_probs.argmax(1)
            result[split] = {
                "photos": len(rows),
                "tf_accuracy": round(float((tf_top == labels).mean()), 4),
                "openvino_accuracy": round(float((ov_top == labels).mean()), 4),
                "top1_agreement": round(float((tf_top == ov_top).mean()), 4),
                "max_abs_probability_difference": round(
                    float(np.abs(tf_probs - ov_probs).max()), 5
                ),
            }
    finally:
        ir.close()
    return result


class precision_env:  # noqa: N801 (used as a context manager)
    """OPENVINO_INFERENCE_PRECISION for what starts inside the block (servers, loads)."""

    def __init__(self, precision: str | None):
        self.precision = precision

    def __enter__(self):
        self.before = os.environ.pop(PRECISION_ENV, None)
        if self.precision:
            os.environ[PRECISION_ENV] = self.precision

    def __exit__(self, *exc):
        os.environ.pop(PRECISION_ENV, None)
        if self.before is not None:
            os.environ[PRECISION_ENV] = self.before


def batch1_latency_ms(target: str, size: int, repeats: int) -> float:
    import numpy as np

    from kitchenware.serving.grpc_client import ServingClient

    pixels = np.random.default_rng(2).integers(0, 256, (1, size, size, 3), dtype=np.uint8)
    times = []
    with ServingClient(target, timeout=120) as client:
        client.predict(pixels)
        for _ in range(repeats):
            started = time.perf_counter()
            client.predict(pixels)
            times.append(time.perf_counter() - started)
    return round(1000 * statistics.median(times), 1)


def gateway_throughput(stack: ServingStack, photos: list[bytes], clients: int, each: int) -> float:
    """Images/s of `clients` threads uploading real photos to POST /predict."""
    import requests

    sessions = [requests.Session() for _ in range(clients)]
    for session in sessions:  # warm: connections, metadata
        session.post(
            stack.url + "/predict", files={"file": ("p.jpg", photos[0])}
        ).raise_for_status()
    failed = []

    def work(index: int) -> None:
        for n in range(each):
            photo = photos[(index * each + n) % len(photos)]
            response = sessions[index].post(
                stack.url + "/predict", files={"file": ("p.jpg", photo)}
            )
            if response.status_code != 200:
                failed.append(f"{response.status_code} {response.text[:200]}")

    elapsed, errors = run_in_threads(work, list(range(clients)))
    for session in sessions:
        session.close()
    errors = [str(e) for e in errors] + failed
    if errors:
        raise SystemExit(f"{len(errors)} gateway requests failed, first: {errors[0]}")
    return clients * each / elapsed


def serve_backend(
    base: Path, workdir: Path, backend: str, precision: str | None, args, photos: list[bytes]
) -> dict:
    with precision_env(precision):
        return _serve_backend(base, workdir, backend, args, photos)


def _serve_backend(base: Path, workdir: Path, backend: str, args, photos: list[bytes]) -> dict:
    server = ModelServer(base, workdir, backend=backend)
    started = time.monotonic()
    with server:
        cold = time.monotonic() - started
        served = served_throughput(server.target, args.size, args.clients, args.requests)
        rss = rss_kb(server.proc.pid) / 1024
        latency = batch1_latency_ms(server.target, args.size, args.latency_repeats)
        python = server.argv[0]
    stack = ServingStack(base, workers=2, log_dir=workdir, backend=backend)
    with stack:
        stack.wait_ready()
        gateway = gateway_throughput(stack, photos, args.clients, args.gateway_requests)
    return {
        "server_python": str(python),
        "cold_start_to_ready_s": round(cold, 2),
        "served_images_per_s": round(served, 2),
        "batch1_latency_ms": latency,
        "rss_after_burst_mb": round(rss, 1),
        "gateway_images_per_s": round(gateway, 2),
    }


def image_sizes() -> dict:
    """Image sizes from the last `make compose-test` in this checkout, if there was one."""
    figures = REPO / "build" / "compose-test" / "figures.json"
    try:
        return json.loads(figures.read_text()).get("image_sizes_mb", {})
    except (OSError, ValueError):
        return {}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.bench_openvino", description=__doc__)
    parser.add_argument("--model", help="trained .keras (default: train the recipe once)")
    parser.add_argument("--size", type=int, default=150, help="input size when training")
    parser.add_argument("--epochs", type=int, default=4, help="stage-1 epochs when training")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=24, help="Predicts per gRPC client")
    parser.add_argument("--gateway-requests", type=int, default=12, help="uploads per client")
    parser.add_argument("--latency-repeats", type=int, default=20)
    parser.add_argument("--offline-repeats", type=int, default=4, help="batch-32 calls")
    parser.add_argument("--workdir", default=str(REPO / "build" / "bench-openvino"))
    args = parser.parse_args(argv)

    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    host = {**machine(), "cpu_flags": cpu_flags()}
    print(f"CPU: {host['cpu']} ({host['nproc']} CPUs), flags: {' '.join(host['cpu_flags'])}")
    model = Path(args.model) if args.model else trained_model(workdir, args.size, args.epochs)
    base = workdir / "models" / "kitchenware"
    if not (base / "1" / "openvino" / "manifest.json").is_file():
        kitchenware("export", "--model", str(model), "--out", str(base), "--version", "1")
    manifest = json.loads((base / "1" / "openvino" / "manifest.json").read_text())
    size = manifest["signatures"][SIGNATURE]["self_test"]["shape"][1]
    args.size = size

    photos_by_split = labelled_photos(workdir)
    photos = [p.read_bytes() for p, _ in photos_by_split["test"][:64]]
    report: dict = {"machine": host, "model": str(model), "size": size}
    report["tf_in_process_batch32_images_per_s"] = round(
        offline_throughput(base / "1", size, 32, args.offline_repeats), 2
    )
    for name, backend, precision in RUNS:
        report[name] = serve_backend(base, workdir, backend, precision, args, photos)
    report["agreement"] = {
        name: agreement(base / "1", size, photos_by_split, precision)
        for name, backend, precision in RUNS
        if backend == "openvino"
    }
    report["image_sizes_mb"] = image_sizes()
    limit = report["tf_in_process_batch32_images_per_s"]
    report["ratios_vs_tf_in_process_batch32"] = {
        f"{name}_{what}": round(report[name][f"{what}_images_per_s"] / limit, 2)
        for name, _, _ in RUNS
        for what in ("served", "gateway")
    }
    (workdir / "report.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    print(f"CPU: {host['cpu']}, flags: {' '.join(host['cpu_flags'])} (figures above)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
