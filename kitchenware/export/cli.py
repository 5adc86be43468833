"""Write a TF Serving SavedModel version of a trained model (and, on request, TFLite).

`kitchenware export` / `python convert.py`. The SavedModel is always written;
`--format tflite` adds the same model as TFLite beside the base path.
"""

from __future__ import annotations

from dataclasses import dataclass

from kitchenware.core.config import add_fields, from_args, option
from kitchenware.core.contract import MODEL_NAME
from kitchenware.core.errors import KitchenwareError
from kitchenware.export import tflite as tflite_export
from kitchenware.export.layout import free_version_dir, next_version
from kitchenware.export.savedmodel import export_saved_model
from kitchenware.training.model import load_keras_model
from kitchenware.training.predict import TTA_MODES

FORMATS = ("savedmodel", "tflite")


@dataclass(kw_only=True)
class ExportConfig:
    """`kitchenware export` options (--format, repeatable, is added by hand)."""

    model: str = option("runs/latest/best.keras", help="trained .keras file")
    out: str = option("models/kitchenware", help="model base path (TF Serving layout)")
    version: int | None = option(None, help="version number (default: last + 1)")
    model_name: str = option(MODEL_NAME, help="name used in the warm-up request")
    tta: str = option(
        "none",
        help="test-time augmentation baked into the signature: flip = mean over image and mirror",
        choices=TTA_MODES,
    )


def add_arguments(parser) -> None:
    add_fields(parser, ExportConfig, only=("model", "out", "version", "model_name"))
    parser.add_argument(
        "--format",
        action="append",
        default=[],
        metavar="FORMAT",
        help="extra artifact next to the SavedModel (always written): tflite -> OUT-tflite/"
        "<version>/; repeatable or comma-separated",
    )
    add_fields(parser, ExportConfig, only=("tta",))


def parse_formats(values) -> set[str]:
    """`--format` values (each maybe a comma list) as a set; always holds savedmodel."""
    chosen = {"savedmodel"}
    for value in values or []:
        for name in value.split(","):
            name = name.strip().lower()
            if name not in FORMATS:
                raise KitchenwareError(
                    f"unknown --format {name!r}; choose from {', '.join(FORMATS)}"
                )
            chosen.add(name)
    return chosen


def run(args) -> int:
    formats = parse_formats(args.format)
    c = from_args(ExportConfig, args)
    model = load_keras_model(c.model)
    version = next_version(c.out) if c.version is None else c.version
    tflite = None
    if "tflite" in formats and c.tta != "none":
        raise KitchenwareError("--tta is baked into the SavedModel only; drop --format tflite")
    if "tflite" in formats:
        # Both folders checked before the (slow) conversion, so a clash writes nothing.
        free_version_dir(c.out, version)
        tflite_dir = tflite_export.tflite_base(c.out)
        free_version_dir(tflite_dir, version)
        tflite = tflite_export.convert(model)
    target = export_saved_model(model, c.out, version, c.model_name, tta=c.tta)
    print(f"exported {c.model} -> {target}" + (f" (tta {c.tta})" if c.tta != "none" else ""))
    if tflite is not None:
        size = int(model.input_shape[1])
        written = tflite_export.write_tflite(tflite, tflite_dir, version, size)
        model_file = written / tflite_export.MODEL_FILE
        print(f"exported {c.model} -> {model_file} ({len(tflite)} bytes)")
    return 0
