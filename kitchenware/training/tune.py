"""Grid search over training hyper-parameters, resumable.

Each combination of --lr, --inner, --dropout and --augment trains into
DIR/trials/<name>/. A trial counts as finished once its history.json exists;
on rerun finished trials are skipped and an interrupted one starts over. A
finished trial trained with other settings (another --epochs, --size, ...)
stops the run instead of being mixed into the results.
After every trial DIR/results.csv, DIR/results.md (sorted by best validation
accuracy, ties by the val loss of that epoch) and DIR/best.json (the winning configuration) are rewritten.
"""

from __future__ import annotations

import csv
import itertools
import json
import shutil
from dataclasses import asdict
from pathlib import Path

from kitchenware.core.config import add_fields, from_args
from kitchenware.core.errors import KitchenwareError
from kitchenware.training.presets import add_preset_argument, preset_overrides
from kitchenware.training.train import BEST_MODEL, TrainConfig, train, validate

FIELDS = [
    "trial",
    "lr",
    "inner",
    "dropout",
    "augment",
    "best_val_accuracy",
    "best_val_loss",
    "best_epoch",
    "epochs_run",
    "seconds",
    "model",
]


def _floats(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise KitchenwareError(f"expected comma-separated numbers, got {text!r}") from None
    if not values:
        raise KitchenwareError("empty list")
    return values


def _ints(text: str) -> list[int]:
    values = _floats(text)
    if any(v != int(v) for v in values):
        raise KitchenwareError(f"expected comma-separated integers, got {text!r}")
    return [int(v) for v in values]


def _switches(text: str) -> list[bool]:
    mapping = {"on": True, "off": False, "true": True, "false": False, "1": True, "0": False}
    try:
        values = [mapping[v.strip().lower()] for v in text.split(",") if v.strip()]
    except KeyError as exc:
        raise KitchenwareError(f"--augment takes on/off values, got {exc.args[0]!r}") from None
    if not values:
        raise KitchenwareError("--augment: empty list")
    return values


def trial_name(lr: float, inner: int, dropout: float, augment: bool) -> str:
    return f"lr{lr:g}_inner{inner}_dropout{dropout:g}_aug{'on' if augment else 'off'}"


def grid(lrs, inners, dropouts, augments) -> list[dict]:
    return [
        {"lr": lr, "inner": inner, "dropout": dropout, "augment": augment}
        for lr, inner, dropout, augment in itertools.product(lrs, inners, dropouts, augments)
    ]


def _row_from_run(name: str, params: dict, run_dir: Path) -> dict:
    summary = json.loads((run_dir / "history.json").read_text())
    history = summary["history"]
    best = history["epoch"].index(summary["best_epoch"])
    return {
        "trial": name,
        **params,
        "best_val_accuracy": summary["best_val_accuracy"],
        "best_val_loss": history["val_loss"][best],
        "best_epoch": summary["best_epoch"],
        "epochs_run": summary["epochs_run"],
        "seconds": summary["seconds"],
        "model": str(run_dir / BEST_MODEL),
    }


def rank(rows: list[dict]) -> list[dict]:
    """Best validation accuracy first; ties (common on a small val split) by lower val loss."""
    return sorted(rows, key=lambda r: (-r["best_val_accuracy"], r["best_val_loss"], r["trial"]))


def write_results(out: Path, rows: list[dict], base: TrainConfig) -> None:
    ranked = rank(rows)
    with (out / "results.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(ranked)
    lines = [
        f"# Tuning results ({base.backbone}, {base.size} px, weights {base.weights}, "
        f"up to {base.epochs} epochs)",
        "",
        "| rank | lr | inner | dropout | augment | best val acc | its val loss | epoch | seconds |",
        "|---:|---:|---:|---:|:---:|---:|---:|---:|---:|",
    ]
    for place, r in enumerate(ranked, 1):
        lines.append(
            f"| {place} | {r['lr']:g} | {r['inner']} | {r['dropout']:g} | "
            f"{'on' if r['augment'] else 'off'} | {r['best_val_accuracy']:.4f} | "
            f"{r['best_val_loss']:.4f} | {r['best_epoch']} | {r['seconds']} |"
        )
    (out / "results.md").write_text("\n".join(lines) + "\n")
    best = ranked[0]
    config = json.loads((Path(best["model"]).parent / "config.json").read_text())
    (out / "best.json").write_text(json.dumps({"result": best, "config": config}, indent=2) + "\n")


# Settings that do not change a trial's result: a rerun may differ in these.
_NOT_COMPARED = ("out", "verbose", "cache", "feature_cache")


def _changed_settings(config: TrainConfig, run_dir: Path) -> list[str]:
    """Settings of a finished trial (its config.json) that differ from `config`."""
    saved = json.loads((run_dir / "config.json").read_text())
    wanted = json.loads(json.dumps(asdict(config)))  # tuples -> lists, as saved
    changed = []
    for key, value in wanted.items():
        if key in _NOT_COMPARED:
            continue
        old = saved.get(key)
        if key == "data" and old is not None:
            same = Path(old).resolve() == Path(value).resolve()
        else:
            same = old == value
        if not same:
            changed.append(f"{key} {old!r} -> {value!r}")
    return changed


def tune(base: TrainConfig, params: list[dict], out: Path) -> list[dict]:
    """Run every missing trial; returns all result rows (finished earlier or now).

    Every trial's settings are checked before the first one trains, and a
    finished trial is reused only if it was trained with the same settings.
    """
    trials_dir = out / "trials"
    configs = [
        TrainConfig(**{**asdict(base), **p, "out": str(trials_dir / trial_name(**p))})
        for p in params
    ]
    for config in configs:
        # bad data, flags or grid values (--dropout 1.5) fail before the first trial; the
        # base alone is not checked: its augment default clashes with --cached-features
        validate(config)
    stale = {
        c.out: changed
        for c in configs
        if (Path(c.out) / "history.json").is_file()
        and (changed := _changed_settings(c, Path(c.out)))
    }
    if stale:
        listed = "; ".join(f"{Path(k).name}: {', '.join(v)}" for k, v in stale.items())
        raise KitchenwareError(
            f"{out} holds finished trials trained with other settings ({listed}); "
            "use another --out, or delete those trial folders to retrain them"
        )
    import keras

    trials_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    for number, (p, config) in enumerate(zip(params, configs, strict=True), 1):
        name = trial_name(**p)
        run_dir = Path(config.out)
        if (run_dir / "history.json").is_file():
            print(f"[{number}/{len(params)}] {name}: finished earlier, skipped")
        else:
            if run_dir.exists():  # interrupted: start that trial over
                shutil.rmtree(run_dir)
            print(f"[{number}/{len(params)}] {name}: training")
            train(config, link_latest=False)
            keras.backend.clear_session()
        rows.append(_row_from_run(name, p, run_dir))
        write_results(out, rows, base)
    return rows


# TrainConfig fields tune takes as flags (the grid flags replace lr, inner, dropout, augment).
BASE_FIELDS = (
    "data",
    "out",
    "backbone",
    "size",
    "weights",
    "epochs",
    "batch_size",
    "seed",
    "patience",
    "class_weights",
    "cached_features",
    "feature_cache",
    "verbose",
)
# Shorter trials than one `kitchenware train`: a grid trains many.
TUNE_DEFAULTS = {"out": "runs/tune", "epochs": 10, "patience": 3, "verbose": 2}
TUNE_HELP = {
    "out": "folder for trials and results",
    "cached_features": "train heads on backbone features computed once (needs --augment off)",
    "feature_cache": "features shared by all trials (default with --cached-features: OUT/features)",
}


def add_arguments(parser) -> None:
    def add_base(names):
        add_fields(parser, TrainConfig, only=names, defaults=TUNE_DEFAULTS, help=TUNE_HELP)

    add_preset_argument(parser)
    add_base(BASE_FIELDS[:2])  # --data, --out
    parser.add_argument("--lr", default="0.0001,0.001,0.01", help="learning rates")
    parser.add_argument("--inner", default="0,10,100", help="inner layer sizes (0 = none)")
    parser.add_argument("--dropout", default="0,0.2,0.5", help="dropout rates")
    parser.add_argument("--augment", default="on,off", help="augmentation on/off")
    add_base(BASE_FIELDS[2:])


def base_config(args) -> TrainConfig:
    """Every trial's settings but the grid's: typed flags, then --preset, then tune's defaults."""
    base = from_args(TrainConfig, args, only=BASE_FIELDS, base=preset_overrides(args))
    if base.cached_features and not base.feature_cache:
        base.feature_cache = str(Path(base.out) / "features")
    return base


def run(args) -> int:
    params = grid(
        _floats(args.lr), _ints(args.inner), _floats(args.dropout), _switches(args.augment)
    )
    base = base_config(args)
    out = Path(args.out)
    rows = tune(base, params, out)
    best = rank(rows)[0]
    print((out / "results.md").read_text())
    print(
        f"best: {best['trial']} val accuracy {best['best_val_accuracy']:.4f} ({out / 'best.json'})"
    )
    return 0
