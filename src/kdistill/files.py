"""Writing files so that a crash never leaves half of one: every stage writes through these
(prepared data, models, run folders, reports), so they sit below all of them."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


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
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide results from the user's colleagues
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
    tmp.chmod(0o755)  # mkdtemp's 0700, likewise
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


def is_run_config(config: Any) -> bool:
    """A distill run's config.json. Runs written before the "kind" key are told apart by the keys
    only distill writes (a model's config.json has neither)."""
    if not isinstance(config, dict):
        return False
    if "kind" in config:
        return config["kind"] == "distill"
    return {"teacher_model", "student_model"} <= config.keys() and isinstance(
        config.get("resolved"), dict
    )
