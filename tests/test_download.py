"""download-model with the Hub replaced at the huggingface_hub boundary: nothing is fetched."""

import runpy
import sys

import huggingface_hub
import pytest
from conftest import REPO

from kdistill.cli import main


class FakeHub:
    """Stands in for `huggingface_hub.snapshot_download`: records the call, writes the files a
    repo would have (minus the ignored patterns, as the real one does)."""

    def __init__(
        self,
        files=("config.json", "model.safetensors", "pytorch_model.bin"),
        error: Exception | None = None,
    ) -> None:
        self.files = files
        self.error = error
        self.calls: list[dict] = []

    def __call__(self, **kwargs):
        import fnmatch
        from pathlib import Path

        self.calls.append(kwargs)
        if self.error is not None:
            raise self.error
        target = Path(kwargs["local_dir"])
        target.mkdir(parents=True, exist_ok=True)
        for name in self.files:
            if not any(fnmatch.fnmatch(name, p) for p in kwargs.get("ignore_patterns") or []):
                (target / name).write_text("x")
        return str(target)


@pytest.fixture()
def hub(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    fake = FakeHub()
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    return fake


def test_seed_step_1_downloads_deepseek_into_models(hub, tmp_path, monkeypatch, capsys):
    """`python scripts/download_deepseek_model.py`, run as the seed runs it, no flags."""
    monkeypatch.setattr(sys, "argv", ["download_deepseek_model.py"])
    with pytest.raises(SystemExit) as exc:
        runpy.run_path(str(REPO / "scripts" / "download_deepseek_model.py"), run_name="__main__")
    assert exc.value.code == 0
    (call,) = hub.calls
    assert call["repo_id"] == "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"
    assert call["revision"] is None
    target = tmp_path / "models" / "DeepSeek-R1-Distill-Qwen-1.5B"
    assert call["local_dir"] == "models/DeepSeek-R1-Distill-Qwen-1.5B"
    assert (target / "model.safetensors").is_file()
    assert not (target / "pytorch_model.bin").exists()  # safetensors only by default
    assert capsys.readouterr().out.strip() == "models/DeepSeek-R1-Distill-Qwen-1.5B"


def test_revision_and_allow_pickle_reach_the_hub(hub, tmp_path):
    code = main(
        [
            "download-model",
            "--model",
            "org/some-model",
            "--revision",
            "v1.0",
            "--allow-pickle",
            "--output-dir",
            "weights",
        ]
    )
    assert code == 0
    (call,) = hub.calls
    assert call["revision"] == "v1.0"
    assert "*.bin" not in call["ignore_patterns"]
    assert "*.h5" in call["ignore_patterns"]  # other frameworks' weights never
    assert (tmp_path / "weights" / "some-model" / "pytorch_model.bin").is_file()


def test_a_repo_with_pickle_weights_only_needs_the_flag(monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(
        huggingface_hub, "snapshot_download", FakeHub(files=("config.json", "pytorch_model.bin"))
    )
    assert main(["download-model", "--model", "org/old"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--allow-pickle" in err


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        ("gated", "gated; accept its terms"),
        ("missing", "no such repo on the Hub"),
        ("revision", "--revision"),
        ("offline", "cannot reach the Hugging Face Hub"),
        ("connection", "cannot reach the Hugging Face Hub"),
    ],
)
def test_hub_failures_are_one_line(monkeypatch, tmp_path, capsys, error, expected):
    from unittest.mock import Mock

    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    response = Mock(headers={}, status_code=404)  # the HTTP client's response, as the Hub sends
    errors = {
        "gated": GatedRepoError("gated", response=response),
        "missing": RepositoryNotFoundError("missing", response=response),
        "revision": RevisionNotFoundError("no revision", response=response),
        "offline": LocalEntryNotFoundError("offline"),
        "connection": ConnectionError("Name or service not known"),
    }
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", FakeHub(error=errors[error]))
    assert main(["download-model", "--revision", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert expected in err
    if error in ("offline", "connection"):
        # It says how to work without the Hub: a local folder passed as the model path.
        assert "--teacher-model models/DeepSeek-R1-Distill-Qwen-1.5B" in err


def test_the_real_client_offline_gives_the_same_line(monkeypatch, tmp_path, capsys):
    """No mock: huggingface_hub itself in offline mode (as on this machine)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert main(["download-model", "--model", "org/not-cached-anywhere"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "cannot reach the Hugging Face Hub" in err
