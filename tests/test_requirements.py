"""What kdistill needs from its libraries, said in one line and pinned rather than defaulted: the
oldest transformers it runs on, and hub kernels off on every model it loads."""

from __future__ import annotations

import pytest
from conftest import CLASSES, REPO

import kdistill
from kdistill import requirements
from kdistill.cli import main
from kdistill.errors import KdistillError


def installed(monkeypatch: pytest.MonkeyPatch, version: str | None) -> None:
    """Pretend the installed transformers is `version` (None: not installed)."""

    def fake(package: str) -> str | None:
        return version if package == "transformers" else "1.0"

    monkeypatch.setattr(requirements, "installed_version", fake)


@pytest.mark.parametrize("version", ["5.23.0", "4.57.6", "5.3.0"])
def test_an_old_transformers_stops_a_command_in_one_line(monkeypatch, capsys, version):
    installed(monkeypatch, version)
    assert main(["runs"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("kdistill: error: ")
    assert f"transformers {version} is installed" in err
    assert "pip install -U 'transformers>=5.24'" in err


@pytest.mark.parametrize("version", ["5.24.0", "5.24.0.dev0", "5.25.0", "5.100.1", "6.0.0rc1"])
def test_the_floor_and_newer_pass(monkeypatch, version):
    installed(monkeypatch, version)
    requirements.check_transformers()


def test_no_transformers_at_all_is_one_line(monkeypatch, capsys):
    installed(monkeypatch, None)
    assert main(["runs"]) == 2
    assert "transformers is not installed" in capsys.readouterr().err


def test_the_python_api_checks_too(monkeypatch):
    installed(monkeypatch, "5.23.0")
    monkeypatch.delitem(kdistill.__dict__, "load_teacher", raising=False)
    with pytest.raises(KdistillError, match=r"needs transformers>=5\.24"):
        kdistill.load_teacher  # noqa: B018
    with pytest.raises(KdistillError, match=r"needs transformers>=5\.24"):
        kdistill.distill  # noqa: B018


def test_pyproject_declares_the_same_floor():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    [spec] = [d for d in project["dependencies"] if d.startswith("transformers")]
    floor = ".".join(map(str, requirements.MIN_TRANSFORMERS))
    assert spec == f"transformers>={floor}"  # no ceiling: the newest release is tested


@pytest.fixture()
def load_kwargs(monkeypatch) -> list[dict]:
    """The keyword arguments of every model from_pretrained call."""
    from transformers import PreTrainedModel

    seen: list[dict] = []
    original = PreTrainedModel.from_pretrained.__func__

    def spy(cls, *args, **kwargs):
        seen.append(kwargs)
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(PreTrainedModel, "from_pretrained", classmethod(spy))
    return seen


def test_every_model_is_loaded_with_hub_kernels_off(tiny_models, load_kwargs):
    """transformers 5.25 kernelizes by default (and again on every train()/eval()): kdistill
    says no on each load, and the models stay as their own code wrote them."""
    from kdistill.students.load import load_student
    from kdistill.teachers.classifier import load_teacher_classifier
    from kdistill.teachers.prompt import PromptSettings, load_prompt_teacher

    student, _ = load_student(str(tiny_models["bert_student"]), CLASSES, seed=0)
    teacher, _, _ = load_teacher_classifier(str(tiny_models["bert_teacher"]), CLASSES, False)
    prompt = load_prompt_teacher(str(tiny_models["qwen_lm"]), CLASSES, PromptSettings()).model
    assert len(load_kwargs) == 3
    assert all(kwargs.get("use_kernels") is False for kwargs in load_kwargs)
    for model in (student, teacher, prompt):
        model.train()
        model.eval()
        assert model.use_kernels is False
        assert getattr(model, "kernels_mode", None) is None
