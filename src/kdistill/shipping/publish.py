"""--push-to-hub: upload a saved model folder, card included, to a Hugging Face Hub repo.

The upload runs after the folder is complete on disk, so a failed upload (offline, no token,
no write access) loses nothing: the error says where the folder is and how to upload it later.
"""

from __future__ import annotations

import logging
from pathlib import Path

from kdistill.errors import KdistillError

logger = logging.getLogger(__name__)

# Files written beside a model that do not belong in its repo.
IGNORE = [".*", "*.tmp", "__pycache__/*"]


def push_folder(folder: Path, repo_id: str, private: bool = True, what: str = "model") -> str:
    """create_repo (exist_ok) then upload_folder; returns the repo URL. Any failure is one line
    that keeps the local folder's path in view."""
    from huggingface_hub import HfApi

    api = HfApi()
    visibility = "private" if private else "public"
    logger.info("uploading %s to the Hub as %s (%s)", folder, repo_id, visibility)
    try:
        url = api.create_repo(repo_id, private=private, repo_type="model", exist_ok=True)
        api.upload_folder(
            repo_id=repo_id,
            folder_path=str(folder),
            repo_type="model",
            commit_message=f"Upload {what} with kdistill",
            ignore_patterns=IGNORE,
        )
    except Exception as e:  # noqa: BLE001  (network, auth and HTTP errors all end the same way)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise KdistillError(
            f"--push-to-hub {repo_id}: the upload failed ({type(e).__name__}: {first}); the "
            f"{what} is saved at {folder}; upload it later with: hf upload {repo_id} {folder}"
        ) from e
    logger.info("pushed %s to %s", folder, url)
    return str(url)
