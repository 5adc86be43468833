"""`kitchenware` command line: one subcommand per pipeline step.

Each subcommand lives in its own module, which defines `add_arguments(parser)`
and `run(args) -> int`. Only the chosen module is imported, so light commands
(the gateway, sample-data) never pay for importing TensorFlow.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from kitchenware.core.errors import KitchenwareError

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "sample-data": ("kitchenware.dataprep.synthetic", "draw a synthetic data set in Kaggle layout"),
    "prep": (
        "kitchenware.dataprep.prep",
        "dedupe and split Kaggle data into train/val/test folders",
    ),
    "train": ("kitchenware.training.train", "fine-tune a pretrained backbone on prep output"),
    "tune": ("kitchenware.training.tune", "grid search over training hyper-parameters"),
    "evaluate": (
        "kitchenware.training.evaluate",
        "accuracy, per-class metrics and confusion matrix",
    ),
    "submit": ("kitchenware.training.submit", "write a Kaggle submission.csv"),
    "weights": (
        "kitchenware.training.weights",
        "pretrained backbone weights: extract or fetch (cached)",
    ),
    "export": ("kitchenware.export.cli", "write a TF Serving SavedModel version"),
    "inspect": ("kitchenware.export.inspection", "show versions and signatures of exported models"),
    "model-server": ("kitchenware.model_server.cli", "TF-Serving-compatible gRPC model server"),
    "gateway": ("kitchenware.gateway", "HTTP gateway (development server)"),
    "classify": (
        "kitchenware.serving.gateway_client",
        "send photos or URLs to a gateway (test.py)",
    ),
}


def _usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = ["usage: kitchenware COMMAND [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "`kitchenware COMMAND --help` shows a command's options."]
    return "\n".join(lines)


def build_parser(name: str) -> tuple[argparse.ArgumentParser, object]:
    module_name, help_ = COMMANDS[name]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(
        prog=f"kitchenware {name}",
        description=(module.__doc__ or help_).strip(),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    module.add_arguments(parser)
    return parser, module


def main(argv: list[str] | None = None, command: str | None = None) -> int:
    """Run a subcommand. `command` fixes the subcommand (for the seed's top-level scripts)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if command is None:
        if not argv or argv[0] in ("-h", "--help"):
            print(_usage())
            return 0 if argv else 2
        command, argv = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"kitchenware: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    parser, module = build_parser(command)
    args = parser.parse_args(argv)
    try:
        return int(module.run(args) or 0)
    except KitchenwareError as exc:
        print(f"kitchenware {command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"kitchenware {command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
