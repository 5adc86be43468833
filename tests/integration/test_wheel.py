"""The wheel holds only the product, and the product runs from it alone.

Built from the checkout's files (tracked and new, in a copy: a stale `build/` folder
cannot leak into it), the wheel must hold `kitchenware/` and its metadata and nothing
else: no devtools, no tests. It is then installed with `--no-deps` into a fresh venv
whose only other import path is a `.pth` line to this venv's site-packages (for the
third-party libraries; a `.pth` path line does not run the editable-install hook in
that folder, so `kitchenware` can come from the wheel only, which the test checks).
From there, with the working folder outside the checkout: `kitchenware --help`, the
model server on a tiny export (configured through the image variables MODEL_NAME,
MODEL_BASE_PATH and REST_PORT, as its image does), and the gateway under gunicorn
with the two files its image puts beside the package (gateway.py, gunicorn.conf.py),
then /healthz, /readyz and one real predict on 127.0.0.1.
"""

from __future__ import annotations

import base64
import io
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import requests
from PIL import Image
from support.paths import REPO

from devtools.stack import free_port, wait_for
from kitchenware.core.labels import CLASSES

pytestmark = pytest.mark.slow  # ~40 s: a wheel build, a venv, TensorFlow starting
NETGUARD = REPO / "tests" / "support" / "netguard"


def _checkout_files() -> list[str]:
    """The checkout's own files: tracked and untracked-but-not-ignored (git), or a walk."""
    if shutil.which("git"):
        listed = subprocess.run(
            ["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            capture_output=True, timeout=60,
        )  # fmt: skip
        if listed.returncode == 0:
            return [name for name in listed.stdout.decode().split("\0") if name]
    skip = {".git", "build", "dist", "__pycache__", "models", "runs", "demo"}
    return [
        str(path.relative_to(REPO))
        for path in REPO.rglob("*")
        if path.is_file()
        and not any(part in skip or part.startswith(".venv") for part in path.parts)
    ]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    source, out = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("wheel")
    for name in _checkout_files():
        if (REPO / name).is_file():  # a deleted file is still listed until committed
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check",
         "--quiet", "--wheel-dir", str(out), str(source)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    (path,) = out.glob("kitchenware-*.whl")
    return path


def test_the_wheel_holds_the_package_and_nothing_else(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/", 1)[0] for name in names}
    assert tops == {"kitchenware", wheel.name.split("-py3")[0] + ".dist-info"}, tops
    assert not [n for n in names if "devtools" in n or "/tests/" in n or "/tools/" in n]
    shipped = {n for n in names if n.startswith("kitchenware/")}
    in_checkout = {
        str(p.relative_to(REPO))
        for p in (REPO / "kitchenware").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    assert shipped == in_checkout, shipped ^ in_checkout  # nothing missing (static files too)


def test_no_product_module_locates_the_checkout():
    """Code that finds files through __file__ works in a checkout and breaks once installed."""
    offenders = [
        f"{path.relative_to(REPO)}:{number}"
        for path in (REPO / "kitchenware").rglob("*.py")
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if "__file__" in line or ".parents[" in line
    ]
    assert offenders == []


@pytest.fixture(scope="module")
def fresh_venv(wheel, tmp_path_factory) -> Path:
    venv = tmp_path_factory.mktemp("venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=120)  # fmt: skip
    python = venv / "bin" / "python"
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
         "--no-index", "--disable-pip-version-check", "--quiet", str(wheel)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stderr
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout.strip()  # fmt: skip
    libraries = sysconfig.get_paths()["purelib"]  # this venv's: TensorFlow, gunicorn, Flask...
    Path(site, "third_party.pth").write_text(f"{libraries}\n{NETGUARD}\n")
    return venv


def _run(venv: Path, *argv: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*argv], cwd=cwd, env=_env(venv), capture_output=True, text=True,
                          timeout=120)  # fmt: skip


def _env(venv: Path, **extra: str) -> dict[str, str]:
    """No PYTHONPATH, nothing of this process's settings: what a fresh shell would have."""
    return {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp"),
            "TF_CPP_MIN_LOG_LEVEL": "2", **extra}  # fmt: skip


def test_kitchenware_comes_from_the_wheel_only(fresh_venv, tmp_path):
    probe = _run(fresh_venv, "python", "-c",
                 "import sys, kitchenware; print(kitchenware.__file__); print(*sys.path, sep='\\n')",
                 cwd=tmp_path)  # fmt: skip
    assert probe.returncode == 0, probe.stderr
    where, *path = probe.stdout.splitlines()
    assert where.startswith(str(fresh_venv)), where
    allowed = {sysconfig.get_paths()["purelib"], str(NETGUARD)}  # the .pth's two lines
    assert not [p for p in path if p.startswith(str(REPO)) and p not in allowed], path
    usage = _run(fresh_venv, "kitchenware", "--help", cwd=tmp_path)
    assert usage.returncode == 0 and "model-server" in usage.stdout, usage.stderr


def _jpeg() -> str:
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(buf, "JPEG")
    return base64.b64encode(buf.getvalue()).decode()


def test_model_server_and_gateway_run_from_the_wheel(fresh_venv, exported_model, tmp_path):
    run_dir = tmp_path / "app"  # what the gateway image puts beside the installed package
    run_dir.mkdir()
    for name in ("gateway.py", "gunicorn.conf.py"):
        shutil.copy2(REPO / name, run_dir / name)
    grpc_port, rest_port, http_port = free_port(), free_port(), free_port()
    model_log, gateway_log = (tmp_path / "model.log").open("wb"), (tmp_path / "gw.log").open("wb")
    model = subprocess.Popen(
        ["kitchenware", "model-server", "--host", "127.0.0.1", "--port", str(grpc_port),
         "--poll-seconds", "0"],
        cwd=tmp_path, stdout=model_log, stderr=subprocess.STDOUT,
        env=_env(fresh_venv, MODEL_NAME=exported_model.name,
                 MODEL_BASE_PATH=str(exported_model.parent), REST_PORT=str(rest_port)),
    )  # fmt: skip
    gateway = subprocess.Popen(
        ["python", "-m", "gunicorn", "-c", "gunicorn.conf.py", "gateway:app"],
        cwd=run_dir, stdout=gateway_log, stderr=subprocess.STDOUT,
        env=_env(fresh_venv, GUNICORN_BIND=f"127.0.0.1:{http_port}", GUNICORN_WORKERS="1",
                 TF_SERVING_HOST=f"127.0.0.1:{grpc_port}"),
    )  # fmt: skip
    url = f"http://127.0.0.1:{http_port}"

    def answers(path: str) -> bool:
        assert model.poll() is None, (tmp_path / "model.log").read_text()[-3000:]
        assert gateway.poll() is None, (tmp_path / "gw.log").read_text()[-3000:]
        try:
            return requests.get(url + path, timeout=5).status_code == 200
        except requests.ConnectionError:
            return False

    try:
        wait_for(lambda: answers("/healthz"), 60, f"{url}/healthz")
        wait_for(lambda: answers("/readyz"), 120, f"{url}/readyz")
        status = requests.get(f"http://127.0.0.1:{rest_port}/v1/models/kitchenware", timeout=5)
        assert status.json()["model_version_status"][0]["state"] == "AVAILABLE"
        response = requests.post(f"{url}/predict", json={"image": _jpeg()}, timeout=60)
        assert response.status_code == 200, response.text
        answer = response.json()
        assert answer["label"] in CLASSES and set(answer["probabilities"]) == set(CLASSES)
        assert sum(answer["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    finally:
        for proc in (gateway, model):
            proc.terminate()
        for proc in (gateway, model):
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        model_log.close()
        gateway_log.close()
