"""Named training presets: settings written once for the demo (`quick`) and the tests (`tiny`).

A preset is a set of TrainConfig field values; `--preset NAME` starts from it
and every flag typed on the command line still wins.
"""

from __future__ import annotations

from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    # The demo: Xception from scratch on synthetic sample data, a few minutes on 2 CPU cores.
    "quick": {
        "size": 96,
        "weights": "none",
        "inner": 0,
        "dropout": 0.0,
        "augment": False,
        "epochs": 6,
        "batch_size": 16,
        "verbose": 2,
    },
    # The tests: the smallest real model (71 px is Xception's minimum), two epochs, a small head.
    "tiny": {
        "backbone": "mobilenet_v2",
        "size": 71,
        "weights": "none",
        "inner": 16,
        "dropout": 0.0,
        "epochs": 2,
        "batch_size": 16,
        "patience": 10,
    },
}


def add_preset_argument(parser) -> None:
    parser.add_argument(
        "--preset",
        default=None,
        choices=sorted(PRESETS),
        help="start from these settings ("
        + "; ".join(
            f"{name}: " + ", ".join(f"{k}={v}" for k, v in values.items())
            for name, values in PRESETS.items()
        )
        + "); flags given beside it win",
    )


def preset_overrides(args) -> dict[str, Any]:
    """The field values of the chosen --preset ({} without one)."""
    name = getattr(args, "preset", None)
    return dict(PRESETS[name]) if name else {}
