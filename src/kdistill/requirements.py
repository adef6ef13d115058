"""The oldest transformers kdistill runs on, checked at command start.

transformers 5.24 renamed the key/value cache: models take `cache=` and return `out.cache`
(before, `past_key_values`). The prompt teacher's prefix cache uses the new names; on an older
release the model would swallow `cache=` in its keyword arguments and score every prompt from
scratch, or fail deep in a forward pass. One line at the start says so instead.

The version is read from the installed package's metadata, not by importing transformers, so
the check costs nothing at start-up. Keep it equal to the floor in pyproject.toml (a test
checks).
"""

from __future__ import annotations

import re
from importlib import metadata

from kdistill.errors import KdistillError

MIN_TRANSFORMERS = (5, 24)


def installed_version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def check_transformers() -> None:
    """Raise a one-line KdistillError when the installed transformers is older than
    MIN_TRANSFORMERS (or missing)."""
    need = ".".join(map(str, MIN_TRANSFORMERS))
    fix = f"pip install -U 'transformers>={need}'"
    version = installed_version("transformers")
    if version is None:
        raise KdistillError(f"transformers is not installed; kdistill needs >={need}: {fix}")
    if _release(version) < MIN_TRANSFORMERS:
        raise KdistillError(
            f"transformers {version} is installed, but kdistill needs transformers>={need} "
            f"(its models take the cache as `cache=`): {fix}"
        )


def _release(version: str) -> tuple[int, int]:
    """(5, 24) from "5.24.0", "5.24.0.dev0" or "5.24.1+local": a source build of 5.24 counts
    as 5.24. An unreadable version string passes (it is someone's own build)."""
    match = re.match(r"(\d+)\.(\d+)", version)
    return (int(match[1]), int(match[2])) if match else MIN_TRANSFORMERS
