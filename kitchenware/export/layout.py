"""Version folders on disk: numbering and the write-then-rename every artifact uses.

A model server polling the base path must never see a half-written version, so
each exporter (SavedModel, TFLite) writes into a staging folder beside the
target and renames it into place.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from kitchenware.core.errors import KitchenwareError


def next_version(base_dir: str | os.PathLike) -> int:
    base = Path(base_dir)
    taken = [int(p.name) for p in base.iterdir() if p.name.isdigit()] if base.is_dir() else []
    return max(taken, default=0) + 1


def free_version_dir(base_dir: str | os.PathLike, version: int) -> Path:
    """BASE/<version> if the number is valid and not taken, else a clear error."""
    if version < 1:
        raise KitchenwareError(f"--version must be a positive integer, got {version}")
    target = Path(base_dir) / str(version)
    if target.exists():
        raise KitchenwareError(f"{target} already exists; choose another --version")
    return target


@contextmanager
def staged_dir(target: Path) -> Iterator[Path]:
    """A temporary folder beside `target`, renamed to it when the block succeeds.

    On any failure (or Ctrl-C) the staging folder is deleted, so a reader of
    the parent folder (a model server polling for versions) never sees a
    half-written `target`.
    """
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        yield staging
        os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
