"""The serving contract: the one home of every name and limit the tiers share.

The exported SavedModel, our model server, the gRPC client, the gateway and the
deployment files all meet here, so a rename or a new limit is one edit:

    model  MODEL_NAME, versions in BASE/<n>/saved_model.pb (TF Serving layout)
    signature `serving_default`
      input   image          uint8   [-1, S, S, 3]  pixels already resized to S
      output  probabilities  float32 [-1, 6]        softmax over the classes
      output  classes        string  [-1, 6]        class names, in output order
    signature `explain` (Grad-CAM, kitchenware.training.gradcam)
      input   image          uint8   [-1, S, S, 3]  as serving_default
      output  probabilities, classes                as serving_default
      output  heatmap        float32 [-1, H, W]     top class's map, [0, 1]
      output  heatmaps       float32 [-1, 6, H, W]  every class's map, in `classes` order

Pure Python: the gateway imports it without TensorFlow.
"""

from __future__ import annotations

import os
from pathlib import Path

MODEL_NAME = "kitchenware"
SIGNATURE = "serving_default"
INPUT = "image"
OUTPUT_PROBABILITIES = "probabilities"
OUTPUT_CLASSES = "classes"
EXPLAIN_SIGNATURE = "explain"
OUTPUT_HEATMAP = "heatmap"
OUTPUT_HEATMAPS = "heatmaps"

# Xception's native input size, the default everywhere a size is chosen.
DEFAULT_IMAGE_SIZE = 299

# gRPC message cap on both sides of the model connection. TF Serving accepts up
# to 2 GiB; 64 MiB holds a batch of 32 uint8 images at 299 px many times over.
MAX_MESSAGE_BYTES = 64 * 2**20

GRPC_PORT = 8500
REST_PORT = 8501
GATEWAY_PORT = 9696

SAVED_MODEL_FILE = "saved_model.pb"
WARMUP_FILE = Path("assets.extra") / "tf_serving_warmup_requests"
# OpenVINO IR of the signatures, inside the version folder (TF Serving ignores it):
# <version>/openvino/<signature>.xml/.bin and a manifest (kitchenware.export.openvino_ir);
# a signature whose outputs another's IR holds runs on that IR (no files of its own).
OPENVINO_DIR = "openvino"
OPENVINO_MANIFEST = "manifest.json"


def versions(base_dir: str | os.PathLike) -> list[int]:
    """Numeric version folders under `base_dir` that hold a saved_model.pb, ascending."""
    base = Path(base_dir)
    if not base.is_dir():
        return []
    return sorted(
        int(p.name)
        for p in base.iterdir()
        if p.is_dir() and p.name.isdigit() and (p / SAVED_MODEL_FILE).is_file()
    )
