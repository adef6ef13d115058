"""A stand-in for huggingface_hub.HfApi: records what would be created and uploaded (the files
in the folder at upload time), or fails like an offline machine."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def fake_hub(monkeypatch: Any, fail: BaseException | None = None) -> list[dict[str, Any]]:
    """Patch huggingface_hub.HfApi; returns the list its calls are appended to."""
    calls: list[dict[str, Any]] = []

    class FakeHfApi:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            pass

        def create_repo(self, repo_id: str, **kwargs: Any) -> str:
            calls.append({"call": "create_repo", "repo_id": repo_id, **kwargs})
            if fail is not None:
                raise fail
            return f"https://huggingface.co/{repo_id}"

        def upload_folder(self, *, repo_id: str, folder_path: str, **kwargs: Any) -> str:
            folder = Path(folder_path)
            files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
            calls.append(
                {
                    "call": "upload_folder",
                    "repo_id": repo_id,
                    "folder_path": folder,
                    "files": files,
                    **kwargs,
                }
            )
            return f"https://huggingface.co/{repo_id}/commit/0"

    monkeypatch.setattr("huggingface_hub.HfApi", FakeHfApi)
    return calls
