"""Show the versions of an exported model and each signature's inputs and outputs.

Like `saved_model_cli show --all`, but reads only saved_model.pb (no variables
are loaded), so it is quick on any size of model. PATH may be the model base
(TF Serving layout, one folder per version) or a single version folder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from kitchenware.core.config import add_fields, from_args, option
from kitchenware.core.contract import OPENVINO_DIR, OPENVINO_MANIFEST, WARMUP_FILE, versions
from kitchenware.core.errors import KitchenwareError

INTERNAL_SIGNATURES = ("__saved_model_init_op",)


def _version_dirs(path: Path) -> list[Path]:
    if (path / "saved_model.pb").is_file():
        return [path]
    if not path.is_dir():
        raise KitchenwareError(f"{path} not found")
    found = versions(path)
    if not found:
        raise KitchenwareError(f"{path} holds no SavedModel versions (<n>/saved_model.pb)")
    return [path / str(v) for v in found]


def _tensor(info) -> dict:
    from tensorflow.core.framework import types_pb2

    shape = None if info.tensor_shape.unknown_rank else [d.size for d in info.tensor_shape.dim]
    return {"dtype": types_pb2.DataType.Name(info.dtype), "shape": shape, "name": info.name}


def describe_version(version_dir: Path) -> dict:
    """Signatures of one SavedModel version, read from its protobuf."""
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel()
    try:
        saved.ParseFromString((version_dir / "saved_model.pb").read_bytes())
    except Exception as exc:  # protobuf's DecodeError and friends
        raise KitchenwareError(f"{version_dir}/saved_model.pb is not a SavedModel: {exc}") from exc
    signatures = {}
    for meta in saved.meta_graphs:
        for key, sig in sorted(meta.signature_def.items()):
            if key in INTERNAL_SIGNATURES:
                continue
            signatures[key] = {
                "method": sig.method_name,
                "inputs": {k: _tensor(v) for k, v in sorted(sig.inputs.items())},
                "outputs": {k: _tensor(v) for k, v in sorted(sig.outputs.items())},
            }
    size = sum(p.stat().st_size for p in version_dir.rglob("*") if p.is_file())
    return {
        "path": str(version_dir),
        "version": version_dir.name,
        "size_bytes": size,
        "warmup": (version_dir / WARMUP_FILE).is_file(),
        "signatures": signatures,
        "openvino": _openvino(version_dir),
    }


def _openvino(version_dir: Path) -> dict | None:
    """Which signatures carry an OpenVINO IR (why others do not, which share another's IR);
    None: no IR at all."""
    path = version_dir / OPENVINO_DIR / OPENVINO_MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
        return {
            "signatures": sorted(manifest["signatures"]),
            "not_converted": dict(manifest.get("not_converted", {})),
            # signature -> the one whose IR it runs on (older manifests: none share)
            "shares": {
                name: {
                    "signature": entry["shares"],
                    "xml": entry["xml"],
                    "outputs": list(entry["outputs"]),
                }
                for name, entry in sorted(manifest["signatures"].items())
                if "shares" in entry
            },
        }
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return {
            "signatures": [],
            "not_converted": {},
            "shares": {},
            "error": f"unreadable {path}: {exc}",
        }


def inspect(path) -> list[dict]:
    return [describe_version(d) for d in _version_dirs(Path(path))]


def _shape_text(shape) -> str:
    if shape is None:
        return "unknown rank"
    return "(" + ", ".join(str(d) for d in shape) + ")"


def format_inspection(found: list[dict]) -> str:
    lines = []
    for v in found:
        lines.append(
            f"version {v['version']}: {v['path']} ({v['size_bytes'] / 1e6:.1f} MB, "
            f"warm-up {'yes' if v['warmup'] else 'no'})"
        )
        ir = v["openvino"]
        if ir is None:
            lines.append("  OpenVINO IR: none (the model server runs it on TensorFlow)")
        else:
            lines.append(f"  OpenVINO IR: {', '.join(ir['signatures']) or 'none'}")
            for key, host in ir.get("shares", {}).items():
                lines.append(
                    f"    '{key}' shares the IR of '{host['signature']}' ({host['xml']}, "
                    f"output {', '.join(host['outputs'])})"
                )
            for key, reason in ir["not_converted"].items():
                lines.append(f"    no IR for '{key}': {reason}")
            if "error" in ir:
                lines.append(f"    {ir['error']}")
        for key, sig in v["signatures"].items():
            lines.append(f"  signature_def['{key}'] (method {sig['method']}):")
            for part in ("inputs", "outputs"):
                lines.append(f"    {part}:")
                for name, t in sig[part].items():
                    lines.append(
                        f"      {name}: {t['dtype']} shape {_shape_text(t['shape'])} (tensor {t['name']})"
                    )
    return "\n".join(lines)


@dataclass(frozen=True)
class InspectConfig:
    """`kitchenware inspect` options (PATH, an optional positional, is added by hand)."""

    json: bool = option(False, help="print JSON instead of text")


def add_arguments(parser) -> None:
    parser.add_argument(
        "path", nargs="?", default="models/kitchenware", help="model base or version folder"
    )
    add_fields(parser, InspectConfig)


def run(args) -> int:
    found = inspect(args.path)
    c = from_args(InspectConfig, args)
    print(json.dumps(found, indent=2) if c.json else format_inspection(found))
    return 0
