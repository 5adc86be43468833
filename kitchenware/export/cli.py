"""Write a TF Serving SavedModel version of a trained model (and, on request, TFLite).

`kitchenware export` / `python convert.py`. The SavedModel is always written;
`--format tflite` adds the same model as TFLite beside the base path.
"""

from __future__ import annotations

from kitchenware.core.contract import MODEL_NAME
from kitchenware.core.errors import KitchenwareError
from kitchenware.export import tflite as tflite_export
from kitchenware.export.layout import free_version_dir, next_version
from kitchenware.export.savedmodel import export_saved_model
from kitchenware.training.model import load_keras_model
from kitchenware.training.predict import TTA_MODES

FORMATS = ("savedmodel", "tflite")


def add_arguments(parser) -> None:
    parser.add_argument("--model", default="runs/latest/best.keras", help="trained .keras file")
    parser.add_argument(
        "--out", default="models/kitchenware", help="model base path (TF Serving layout)"
    )
    parser.add_argument(
        "--version", type=int, default=None, help="version number (default: last + 1)"
    )
    parser.add_argument("--model-name", default=MODEL_NAME, help="name used in the warm-up request")
    parser.add_argument(
        "--format",
        action="append",
        default=[],
        metavar="FORMAT",
        help="extra artifact next to the SavedModel (always written): tflite -> OUT-tflite/"
        "<version>/; repeatable or comma-separated",
    )
    parser.add_argument(
        "--tta",
        default="none",
        choices=TTA_MODES,
        help="test-time augmentation baked into the signature: flip = mean over image and mirror",
    )


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
    model = load_keras_model(args.model)
    version = next_version(args.out) if args.version is None else args.version
    tflite = None
    if "tflite" in formats and args.tta != "none":
        raise KitchenwareError("--tta is baked into the SavedModel only; drop --format tflite")
    if "tflite" in formats:
        # Both folders checked before the (slow) conversion, so a clash writes nothing.
        free_version_dir(args.out, version)
        tflite_dir = tflite_export.tflite_base(args.out)
        free_version_dir(tflite_dir, version)
        tflite = tflite_export.convert(model)
    target = export_saved_model(model, args.out, version, args.model_name, tta=args.tta)
    print(
        f"exported {args.model} -> {target}" + (f" (tta {args.tta})" if args.tta != "none" else "")
    )
    if tflite is not None:
        size = int(model.input_shape[1])
        written = tflite_export.write_tflite(tflite, tflite_dir, version, size)
        model_file = written / tflite_export.MODEL_FILE
        print(f"exported {args.model} -> {model_file} ({len(tflite)} bytes)")
    return 0
