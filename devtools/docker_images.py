"""Build the two images of the stack under a build-only `Sandbox` daemon.

Where Docker Hub cannot be reached, neither `python:3.11-slim` nor
`tensorflow/serving` can be pulled. The Python images then build on a
stand-in base made here from Debian packages (`mmdebstrap`), and the model
image is the TF-Serving-compatible `image-model-python.dockerfile`; the
function that picks it says why. The stand-in trusts the host's CA bundle so
that pip inside a build reaches the registry the way the host does; it is
made on this machine and never leaves it.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from devtools.docker_sandbox import Sandbox, SandboxError
from devtools.stack import REPO

STAND_IN_BASE = "kitchenware/python-base:3.11-bookworm"
STAND_IN_NGINX = "kitchenware/nginx-base:bookworm"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
TF_SERVING_DOCKERFILE = "image-model.dockerfile"
PYTHON_MODEL_DOCKERFILE = "image-model-python.dockerfile"
GATEWAY_DOCKERFILE = "image-gateway.dockerfile"
PROXY_DOCKERFILE = "image-proxy.dockerfile"


@dataclass
class BuiltImages:
    model: str
    gateway: str
    proxy: str
    model_dockerfile: str
    python_image: str
    nginx_image: str
    seconds: dict[str, float] = field(default_factory=dict)
    sizes_mb: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def dockerfile_arg(dockerfile: str, name: str) -> str:
    """The default of `ARG name=...` in a Dockerfile of the checkout."""
    for line in (REPO / dockerfile).read_text().splitlines():
        if line.startswith(f"ARG {name}="):
            return line.split("=", 1)[1].strip()
    raise SandboxError(f"{dockerfile} has no ARG {name}=...")


CLEAN_APT = (
    'rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/* "$1"/usr/share/doc/* "$1"/usr/share/man/*'
)


def debian_image(box: Sandbox, tag: str, packages: str, hooks: list[str], changes: list[str],
                 why: str, log=print) -> str:  # fmt: skip
    """A minimal Debian bookworm with `packages`, made with mmdebstrap and imported as `tag`
    (once per data root): `hooks` customise the tree, `changes` are Dockerfile lines."""
    if box.image_exists(tag):
        return tag
    log(f"images: making the stand-in {tag} with mmdebstrap ({why})")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="kitchenware-debian-") as tmp:
        rootfs = Path(tmp) / "rootfs.tar"
        argv = ["mmdebstrap", "--quiet", "--variant=minbase", f"--include={packages}"]
        argv += [f"--customize-hook={hook}" for hook in [*hooks, CLEAN_APT]]
        argv += ["bookworm", str(rootfs)]
        done = subprocess.run(argv, capture_output=True, text=True)
        if done.returncode:
            raise SandboxError(f"mmdebstrap failed ({done.returncode}):\n{done.stderr[-3000:]}")
        flags = [arg for change in changes for arg in ("--change", change)]
        box.docker("import", *flags, str(rootfs), tag, capture_output=True, text=True)
    log(f"images: {tag} made in {time.monotonic() - started:.0f} s")
    return tag


def stand_in_base(box: Sandbox, tag: str = STAND_IN_BASE, log=print) -> str:
    """A minimal Debian bookworm with python3.11 and venv, as `tag` (made once per data root)."""
    if box.image_exists(tag):
        return tag
    if not HOST_CA_BUNDLE.is_file():
        raise SandboxError(
            f"{HOST_CA_BUNDLE} is missing: pip inside the build could not verify TLS"
        )
    hooks = [f'cp {HOST_CA_BUNDLE} "$1{HOST_CA_BUNDLE}"', 'ln -sf python3.11 "$1/usr/bin/python"']
    changes = [f"ENV PIP_CERT={HOST_CA_BUNDLE}", "ENV LANG=C.UTF-8", 'CMD ["python3"]']
    return debian_image(box, tag, "python3.11,python3.11-venv,ca-certificates,passwd", hooks,
                        changes, "python:3.11-slim cannot be pulled", log)  # fmt: skip


def stand_in_nginx(box: Sandbox, tag: str = STAND_IN_NGINX, log=print) -> str:
    """Debian bookworm's nginx (+ envsubst, curl) as `tag`, where the official image cannot be
    pulled: the same binary paths, a different nginx version (1.22, the config needs no newer)."""
    return debian_image(box, tag, "nginx-light,gettext-base,curl,ca-certificates",
                        ['rm -f "$1"/etc/nginx/sites-enabled/*'],
                        ['CMD ["nginx", "-g", "daemon off;"]'],
                        "the nginx image cannot be pulled", log)  # fmt: skip


def nginx_image(box: Sandbox, log=print) -> str:
    """The proxy's base: the Dockerfile's pinned official image, or the stand-in."""
    default = dockerfile_arg(PROXY_DOCKERFILE, "NGINX_IMAGE")
    if box.image_exists(default):
        return default
    if box.docker("pull", default, check=False, capture_output=True).returncode == 0:
        return default
    return stand_in_nginx(box, log=log)


def model_dockerfile(box: Sandbox) -> tuple[str, str]:
    """(Dockerfile, why): TF Serving's image when its base is there, else ours."""
    base = f"tensorflow/serving:{dockerfile_arg(TF_SERVING_DOCKERFILE, 'TF_SERVING_VERSION')}"
    if box.image_exists(base):
        return TF_SERVING_DOCKERFILE, f"{base} is present"
    pulled = box.docker("pull", base, check=False, capture_output=True, text=True)
    if pulled.returncode == 0:
        return TF_SERVING_DOCKERFILE, f"pulled {base}"
    return PYTHON_MODEL_DOCKERFILE, (
        f"{base} cannot be pulled here, so the model image is {PYTHON_MODEL_DOCKERFILE} "
        "(kitchenware model-server, the same APIs, ports, batching file and warm-up)"
    )


def python_image(box: Sandbox, log=print) -> str:
    """The base of both Python images: the Dockerfiles' default, or the stand-in."""
    default = dockerfile_arg(GATEWAY_DOCKERFILE, "PYTHON_IMAGE")
    if box.image_exists(default):
        return default
    if box.docker("pull", default, check=False, capture_output=True).returncode == 0:
        return default
    return stand_in_base(box, log=log)


def image_size_mb(box: Sandbox, tag: str) -> float:
    return int(box.output("image", "inspect", "--format", "{{.Size}}", tag)) / 1e6


def build(box: Sandbox, dockerfile: str, tag: str, args: dict[str, str], log=print,
          buildkit: bool = False) -> float:  # fmt: skip
    """`docker build` with host networking, legacy builder or BuildKit; its seconds."""
    argv = ["build", "--network", "host", "--file", dockerfile, "--tag", tag]
    for key, value in args.items():
        argv += ["--build-arg", f"{key}={value}"]
    env = box.env(DOCKER_BUILDKIT="1" if buildkit else "0")
    started = time.monotonic()
    done = box.docker(*argv, ".", check=False, cwd=REPO, capture_output=True, text=True, env=env)
    seconds = time.monotonic() - started
    builder = "BuildKit" if buildkit else "the legacy builder"
    if done.returncode:
        output = (done.stdout + done.stderr)[-4000:]
        raise SandboxError(f"building {tag} from {dockerfile} with {builder} failed:\n{output}")
    log(f"images: built {tag} from {dockerfile} with {builder} in {seconds:.0f} s")
    return seconds


def build_stack(
    box: Sandbox, model_dir: str, model_version: int, tag: str, log=print
) -> BuiltImages:
    """Both images of the compose stack, tagged like docker-compose.yaml names them."""
    started = time.monotonic()
    base = python_image(box, log=log)
    nginx = nginx_image(box, log=log)
    base_seconds = time.monotonic() - started
    dockerfile, why = model_dockerfile(box)
    log(f"images: model image from {dockerfile}: {why}")
    built = BuiltImages(
        model=f"kitchenware-model:{tag}",
        gateway=f"kitchenware-gateway:{tag}",
        proxy=f"kitchenware-proxy:{tag}",
        model_dockerfile=dockerfile,
        python_image=base,
        nginx_image=nginx,
        notes=[why],
    )
    built.seconds["base"] = base_seconds
    model_args = {"MODEL_DIR": model_dir, "MODEL_VERSION": str(model_version)}
    if dockerfile == PYTHON_MODEL_DOCKERFILE:
        model_args["PYTHON_IMAGE"] = base
    jobs = [("model", dockerfile, built.model, model_args),
            ("gateway", GATEWAY_DOCKERFILE, built.gateway, {"PYTHON_IMAGE": base}),
            ("proxy", PROXY_DOCKERFILE, built.proxy, {"NGINX_IMAGE": nginx})]  # fmt: skip
    # The legacy builder's images run; BuildKit proves the same files build there too
    # (no `# syntax=` frontend to pull, no `COPY --chmod`).
    for buildkit in (False, True):
        for name, file, image, args in jobs:
            key, image = (f"{name}_buildkit", f"{image}-buildkit") if buildkit else (name, image)
            built.seconds[key] = build(box, file, image, args, log=log, buildkit=buildkit)
    images = (("model", built.model), ("gateway", built.gateway), ("proxy", built.proxy),
              ("base", base))  # fmt: skip
    for name, image in images:
        built.sizes_mb[name] = image_size_mb(box, image)
    return built
