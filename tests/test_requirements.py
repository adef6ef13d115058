"""What kdistill needs from its libraries, said in one line: the oldest transformers it runs
on."""

from __future__ import annotations

import pytest
from conftest import REPO

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
