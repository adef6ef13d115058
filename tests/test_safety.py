"""Safe by default: safetensors weights only unless --allow-pickle, a model's own code never run
unless --trust-remote-code, no network for local models and data, and names that cannot reach
outside --data-dir."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest
import torch
from conftest import write_toy_csv

from kdistill.cli import main
from kdistill.data import model_files as kmodels
from kdistill.data import prepare as kdata
from kdistill.data import sources as ksources


@pytest.fixture()
def project(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    # Every test starts from the safe policy and leaves it so for the rest of the session.
    monkeypatch.setattr(kmodels, "_policy", kmodels.LoadPolicy())
    write_toy_csv(tmp_path / "toy.csv", 12)
    return tmp_path


@pytest.fixture()
def spy(monkeypatch) -> list[tuple[str, dict]]:
    """Every from_pretrained call kdistill makes: (class name, keyword arguments)."""
    import transformers

    calls: list[tuple[str, dict]] = []
    for name in (
        "AutoConfig",
        "AutoTokenizer",
        "AutoModelForSequenceClassification",
        "AutoModelForCausalLM",
    ):
        cls = getattr(transformers, name)
        original = cls.from_pretrained.__func__

        def recorded(klass, *args, _name=name, _original=original, **kwargs):
            calls.append((_name, kwargs))
            return _original(klass, *args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", classmethod(recorded))
    return calls


def eval_teacher(teacher: Path | str, *flags: str) -> list[str]:
    return [
        "eval-teacher",
        "--dataset",
        "toy.csv",
        "--teacher-model",
        str(teacher),
        "--mixed-precision",
        "no",
        *flags,
    ]


def test_every_load_is_safetensors_only_and_runs_no_model_code(project, tiny_models, spy):
    assert main(eval_teacher(tiny_models["bert_teacher"])) == 0
    assert {name for name, _ in spy} >= {"AutoTokenizer", "AutoModelForSequenceClassification"}
    assert all(kwargs.get("trust_remote_code") is False for _, kwargs in spy), spy
    weights = [kw for name, kw in spy if name.startswith("AutoModel")]
    assert weights and all(kw.get("use_safetensors") is True for kw in weights)


def test_flags_lift_the_defaults(project, tiny_models, spy):
    assert (
        main(eval_teacher(tiny_models["bert_teacher"], "--allow-pickle", "--trust-remote-code"))
        == 0
    )
    assert all(kwargs.get("trust_remote_code") is True for _, kwargs in spy)
    assert not any("use_safetensors" in kw for _, kw in spy)


def pickle_only(source: Path, target: Path) -> Path:
    """The checkpoint with its weights as pytorch_model.bin, as older Hub repos ship them."""
    from safetensors.torch import load_file

    shutil.copytree(source, target)
    weights = target / "model.safetensors"
    torch.save(load_file(weights), target / "pytorch_model.bin")
    weights.unlink()
    return target


def test_pickle_weights_load_only_with_allow_pickle(project, tiny_models, capsys):
    folder = pickle_only(tiny_models["bert_teacher"], project / "old-teacher")
    assert main(eval_teacher(folder)) == 2
    err = capsys.readouterr().err
    assert "only weights are pickle files (pytorch_model.bin)" in err and "--allow-pickle" in err
    assert main(eval_teacher(folder, "--allow-pickle")) == 0
    assert "accuracy" in capsys.readouterr().out


def test_hub_models_are_asked_for_safetensors_too(project):
    """A Hub repo without safetensors fails inside transformers; the message names the flag."""
    error = OSError(
        "org/old does not appear to have a file named model.safetensors or "
        "model.safetensors.index.json and thus cannot be loaded with `safetensors`. "
        "Please do not set `use_safetensors=True`."
    )
    message = str(kmodels.load_error("--teacher-model", "org/old", error))
    assert message.startswith("--teacher-model org/old: no safetensors weights; pass --allow-")


@pytest.fixture()
def no_network(monkeypatch) -> list[object]:
    """Sockets that refuse to connect, and every offline switch off: a library that reaches for
    the network is caught trying, rather than quietly skipped by offline mode."""
    import datasets.config
    import huggingface_hub.constants

    from kdistill.data import hub

    attempts: list[object] = []

    def refuse(self, address, *args):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            attempts.append(address)
            raise OSError(f"network disabled in this test (connect to {address})")
        return real_connect(self, address, *args)

    def refuse_lookup(host, *args, **kwargs):
        attempts.append(host)
        raise socket.gaierror(f"network disabled in this test (lookup {host})")

    real_connect = socket.socket.connect
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse_lookup)
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    hub.hub_reachable.cache_clear()
    yield attempts
    hub.hub_reachable.cache_clear()


def test_local_models_and_data_never_touch_the_network(project, tiny_models, no_network):
    assert main(["prepare-data", "--dataset", "toy.csv"]) == 0
    assert main(eval_teacher(tiny_models["bert_teacher"])) == 0
    assert (
        main(
            [
                "distill",
                "--dataset",
                "toy",
                "--teacher-model",
                str(tiny_models["bert_teacher"]),
                "--student-model",
                str(tiny_models["bert_student"]),
                "--epochs",
                "1",
                "--allow-weak-teacher",
                "--mixed-precision",
                "no",
            ]
        )
        == 0
    )
    assert no_network == []


def test_a_hub_id_is_the_only_thing_that_asks_the_network(project, no_network, capsys):
    assert main(["prepare-data", "--dataset", "org/name"]) == 2
    assert no_network, "a Hub id should try the Hub"
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--dataset org/name" in err


def test_prepared_data_is_looked_up_by_plain_name_only(project):
    assert main(["prepare-data", "--dataset", "toy.csv"]) == 0
    assert kdata.prepared_under("data", "toy") == Path("data/toy")
    inner = Path("data/toy/inner")
    for name in ("..", ".", "../toy", "toy/..", "/tmp"):
        assert kdata.prepared_under(str(inner), name) is None, name
    assert kdata.prepared_under(str(inner), "missing") is None


@pytest.mark.parametrize(
    ("source", "name"), [(".", "project"), ("..", None), ("a/..", None), (".hidden.csv", "hidden")]
)
def test_dataset_names_are_plain_folder_names(project, source, name):
    (project / "a").mkdir(exist_ok=True)
    got = ksources.dataset_name(source)
    assert got not in ("", ".", "..") and "/" not in got and not got.startswith(".")
    if name == "project":
        assert got == project.name
    elif name:
        assert got == name


def test_prepare_data_from_the_current_folder_stays_inside_data(project):
    """`--dataset .` once named its output `data/.`; it is named after the folder now."""
    assert main(["prepare-data", "--dataset", "."]) == 0
    assert (project / "data" / project.name / "train.parquet").is_file()
