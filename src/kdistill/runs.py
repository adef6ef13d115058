"""Run directories and atomic writes.

A crash must never leave a half-written file or model where a good one was, so everything is
written under a temporary name beside its destination and renamed into place (a rename within one
file system is atomic). A run directory carries the `.partial` suffix until the run completes.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

PARTIAL_SUFFIX = ".partial"


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


@contextlib.contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yield a fresh temporary folder; on success it replaces `path`, on failure it is removed.

    The old folder (if any) is renamed aside before the new one moves in and deleted only after,
    so at every instant either the old or the new complete folder sits at `path`... except for the
    instant between the two renames, when `path` is briefly absent but nothing is half-written.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if path.exists():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
    os.replace(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def format_float(x: float) -> str:
    """3 -> '3.0', 0.70 -> '0.7': the seed's run names (T3.0_A0.7)."""
    return repr(float(x))


def new_run_dir(parent: Path, name: str, now: datetime | None = None) -> tuple[Path, Path]:
    """Reserve `<parent>/<name>_<YYYYMMDD_HHMMSS>` and create its `.partial` working folder.

    Returns (final_path, partial_path). Never reuses a name: a second run in the same second, or
    one whose partial folder survives from a crash, gets a `_2`, `_3`... suffix.
    """
    stamp = (now or datetime.now()).strftime("%Y%m%d_%H%M%S")
    parent.mkdir(parents=True, exist_ok=True)
    base = f"{name}_{stamp}"
    for i in range(1, 1000):
        final = parent / (base if i == 1 else f"{base}_{i}")
        partial = final.with_name(final.name + PARTIAL_SUFFIX)
        if final.exists() or partial.exists():
            continue
        try:
            partial.mkdir()
        except FileExistsError:  # another process took it between the check and mkdir
            continue
        return final, partial
    raise RuntimeError(f"could not reserve a run directory for {base} under {parent}")


def finish_run_dir(partial: Path, final: Path) -> Path:
    os.replace(partial, final)
    return final
