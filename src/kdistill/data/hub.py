"""Is the Hugging Face Hub reachable? When it is not, say so at once.

Without a network the Hub client retries every request for about 25 s (per file) before failing.
One quick TCP check up front lets kdistill switch the clients to their local cache instead: a
model or data set already cached still loads, anything else fails in a second with our one-line
error.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
from urllib.parse import urlparse

logger = logging.getLogger(__name__)


@functools.cache
def hub_reachable(timeout: float = 5.0) -> bool:
    """One TCP connect to the Hub endpoint, memoised: a second instead of 25 s of retries."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("0", "", "false", "no"):
        return False
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    parsed = urlparse(endpoint)
    host, port = parsed.hostname or "huggingface.co", parsed.port or 443
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def use_cache_if_offline() -> bool:
    """Put huggingface_hub, transformers and datasets in offline mode if the Hub is unreachable.
    Returns whether the Hub is reachable."""
    if hub_reachable():
        return True
    import huggingface_hub.constants

    huggingface_hub.constants.HF_HUB_OFFLINE = True
    try:
        import datasets.config

        datasets.config.HF_HUB_OFFLINE = True
    except ImportError:  # pragma: no cover - datasets is a dependency
        pass
    logger.debug("the Hugging Face Hub is unreachable: using the local cache only")
    return False


def check_demo_dataset(dataset: str) -> int:
    """`make demo`'s first step: a Hub data set on a machine without the Hub stops at once, in one
    line that shows the offline form."""
    from pathlib import Path

    if Path(dataset).expanduser().exists() or hub_reachable():
        return 0
    shared = Path("../shared/data/dbpedia/dbpedia_5k.csv")
    example = f" (here: make demo DATASET={shared})" if shared.is_file() else ""
    print(
        f"make demo: --dataset {dataset} needs the Hugging Face Hub, which is unreachable; run "
        f"offline on a labelled file instead: make demo DATASET=path/to/labelled.csv{example}"
    )
    return 2


if __name__ == "__main__":
    import sys

    sys.exit(check_demo_dataset(sys.argv[1]))
