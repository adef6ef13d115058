"""download-model: a Hub snapshot into models/<name>/, safetensors only unless asked."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from kdistill.errors import KdistillError

if TYPE_CHECKING:
    from kdistill.config import DownloadConfig

logger = logging.getLogger(__name__)

# Pickle-based weight formats can run code when loaded; safetensors cannot.
PICKLE_PATTERNS = ["*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl", "*.pickle"]
# Other frameworks' weights a PyTorch user never needs.
OTHER_FRAMEWORKS = ["*.msgpack", "*.h5", "*.ot", "flax_model*", "tf_model*", "rust_model*"]
WEIGHT_SUFFIXES = (".safetensors", ".gguf")


def local_name(repo_id: str) -> str:
    """The folder a repo downloads into: its last part, as the seed's script named it."""
    return repo_id.rstrip("/").split("/")[-1]


def download_model(config: DownloadConfig) -> Path:
    """Resumable: files already complete in the target are skipped, partial ones continued."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:  # before anything touches the disk or the network
        validate_repo_id(config.model)
    except HFValidationError as e:
        raise KdistillError(
            f"--model {config.model!r}: not a Hub repo id ({str(e).strip().splitlines()[0]}); "
            "pass one such as org/name"
        ) from e
    target = Path(config.output_dir) / local_name(config.model)
    ignore = OTHER_FRAMEWORKS + ([] if config.allow_pickle else PICKLE_PATTERNS)
    logger.info(
        "downloading %s%s into %s",
        config.model,
        f"@{config.revision}" if config.revision else "",
        target,
    )
    path = _snapshot(config, target, ignore)
    weights = [p for p in path.rglob("*") if p.suffix in WEIGHT_SUFFIXES]
    if not weights and not config.allow_pickle:
        raise KdistillError(
            f"--model {config.model}: the repo has no safetensors weights; pass --allow-pickle to "
            "download its pickle weights (only from a source you trust)"
        )
    return path


def _snapshot(config: DownloadConfig, target: Path, ignore: list[str]) -> Path:
    """snapshot_download into `target`, its failures as one line that says what to do."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    offline_hint = (
        "download it on a machine with internet (kdistill download-model or huggingface-cli "
        "download), copy the folder here and pass its path, e.g. --teacher-model "
        f"{target}"
    )
    try:
        path = snapshot_download(
            repo_id=config.model,
            revision=config.revision,
            local_dir=str(target),
            ignore_patterns=ignore,
        )
    except GatedRepoError as e:
        raise KdistillError(
            f"--model {config.model}: the repo is gated; accept its terms on the Hub and log in "
            "(huggingface-cli login)"
        ) from e
    except RepositoryNotFoundError as e:
        raise KdistillError(
            f"--model {config.model}: no such repo on the Hub (or it is private: log in first)"
        ) from e
    except RevisionNotFoundError as e:
        raise KdistillError(f"--revision {config.revision}: not found in {config.model}") from e
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as e:
        raise KdistillError(f"cannot reach the Hugging Face Hub; {offline_hint}") from e
    except OSError as e:  # connection errors from the HTTP client are OSError subclasses
        raise KdistillError(f"cannot reach the Hugging Face Hub ({e}); {offline_hint}") from e
    return Path(path)
