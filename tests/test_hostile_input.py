"""Hostile input through the real CLI: every bad file, flag, model folder and environment below
ends in exit status 2 and one line on stderr that names the problem, never a traceback, and
leaves nothing behind (no new folder under the project, no `.partial` run).

Each case builds its input in a fresh project folder, runs `kdistill.cli.main` there and compares
the folder's tree before and after. The models are conftest's tiny random ones; nothing here
reaches the network.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CLASSES, REPO, write_toy_csv

from kdistill.cli import main


@pytest.fixture()
def project(tmp_path, monkeypatch) -> Path:
    """A working folder with the folders kdistill writes into, already there (so a refusal that
    creates a run folder inside one shows up), and the toy data set."""
    root = tmp_path / "project"
    for folder in ("data", "outputs", "models"):
        (root / folder).mkdir(parents=True)
    write_toy_csv(root / "toy.csv", 12)
    monkeypatch.chdir(root)
    return root


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def run_cli(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as e:  # argparse refuses flags by exiting
        return int(e.code)


# A progress bar (the teacher's pass over validation) may precede a refusal; it is not an error.
PROGRESS_BAR = re.compile(r"\d+%\|.*\| *\d+/\d+")


def refused(capsys, project: Path, argv: list[str], expected: str) -> str:
    """Run the CLI; assert the refusal is clean and that it left the project as it was."""
    before = tree(project)
    code = run_cli(argv)
    out = capsys.readouterr().err
    assert code == 2, f"exit {code}: {out}"
    assert "Traceback" not in out
    lines = [line for line in re.split(r"[\r\n]+", out) if line.strip()]
    assert len([line for line in lines if not PROGRESS_BAR.search(line)]) == 1, out
    err = lines[-1].strip()
    assert re.match(r"kdistill( [a-z-]+)?: error: ", err), err
    assert re.search(expected, err), err
    created = tree(project) - before
    assert not created, f"left behind: {sorted(created)}"
    assert not [p for p in project.rglob("*.partial")]
    return err


def write(path: Path, content: str | bytes) -> Path:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def toy_rows(n_per_class: int = 6) -> str:
    """The toy classes as CSV body rows (no header)."""
    return "".join(
        f"{label.lower()} words number {i},{label}\n"
        for label in CLASSES
        for i in range(n_per_class)
    )


# --------------------------------------------------------------------------- data files

# (case id, file name, content, extra flags, what the error must say)
DATA_CASES = [
    (
        "malformed-csv-unclosed-quote",
        "bad.csv",
        'text,label\n"an unclosed quote,Animal\nsecond row,Film\n',
        [],
        r"cannot read .*bad\.csv",
    ),
    (
        "malformed-csv-ragged-rows",
        "bad.csv",
        "text,label\n" + toy_rows(2) + "one,two,three,four\n",
        [],
        r"cannot read .*bad\.csv",
    ),
    (
        "wrong-delimiter-semicolons",
        "semi.csv",
        "text;label\n" + toy_rows(3).replace(",", ";"),
        [],
        r"separated by semicolons",
    ),
    (
        "wrong-delimiter-tabs-in-csv",
        "tabs.csv",
        "text\tlabel\n" + toy_rows(3).replace(",", "\t"),
        [],
        r"separated by tabs.*\.tsv",
    ),
    (
        "missing-text-column",
        "body.csv",
        "body,label\n" + toy_rows(3),
        [],
        r"no column 'text' \(columns: body, label\); choose one with --text-column",
    ),
    (
        "missing-label-column",
        "cat.csv",
        "text,category\n" + toy_rows(3),
        [],
        r"no column 'label' \(columns: text, category\); choose one with --label-column",
    ),
    (
        "named-text-column-missing",
        "toy2.csv",
        "text,label\n" + toy_rows(3),
        ["--text-column", "title,body"],
        r"no column 'title'.*--text-column",
    ),
    (
        "empty-text-column",
        "notext.csv",
        "text,label\n" + ",Animal\n,Film\n" * 5,
        [],
        r"no row with both text and label",
    ),
    (
        "empty-label-column",
        "nolabel.csv",
        "text,label\n" + "some words,\nmore words,\n" * 5,
        [],
        r"label column 'label' is empty",
    ),
    (
        "nan-labels",
        "nan.csv",
        "text,label\n" + "some words,NaN\nmore words,nan\n" * 5,
        [],
        r"label column 'label' is empty",
    ),
    ("header-only", "header.csv", "text,label\n", [], r"header\.csv has no rows"),
    ("zero-bytes", "empty.csv", "", [], r"empty\.csv is empty"),
    (
        "non-utf8-latin1",
        "latin1.csv",
        ("text,label\n" + toy_rows(3) + "caf\xe9 cr\xe8me,Film\n").encode("latin-1"),
        [],
        r"latin1\.csv is not UTF-8 text \(line 14\)",
    ),
    (
        "binary-garbage-as-csv",
        "garbage.csv",
        bytes(range(256)) * 40,
        [],
        r"garbage\.csv is not UTF-8 text",
    ),
    (
        "single-class",
        "one.csv",
        "text,label\n" + "".join(f"text {i},Animal\n" for i in range(20)),
        [],
        r"one class \(Animal\); a classifier needs at least 2",
    ),
    (
        "class-with-one-example",
        "rare.csv",
        "text,label\n" + toy_rows(6) + "lonely row,Ship\n",
        [],
        r"--validation-split: class 'Ship' has a single example",
    ),
    (
        "class-with-one-example-test-split",
        "rare2.csv",
        "text,label\n" + toy_rows(6) + "lonely row,Ship\n",
        ["--test-split", "0.2"],
        r"--test-split: class 'Ship' has a single example",
    ),
    (
        "empty-strings-jsonl",
        "blank.jsonl",
        "".join(
            json.dumps({"text": t, "label": "Animal" if i % 2 else "Film"}) + "\n"
            for i, t in enumerate(["", "   ", "\n", ""] * 3)
        ),
        [],
        r"no row with both text and label",
    ),
    (
        "nan-labels-jsonl",
        "nan.jsonl",
        "".join(f'{{"text": "words {i}", "label": NaN}}\n' for i in range(8)),
        [],
        r"label column 'label' is empty",
    ),
    (
        "jsonl-bad-line",
        "bad.jsonl",
        '{"text": "fine", "label": "Animal"}\n{"text": "broken", "label": \n'
        '{"text": "fine too", "label": "Film"}\n',
        [],
        r"bad\.jsonl line 2 is not a JSON object",
    ),
    (
        "jsonl-line-not-an-object",
        "list.jsonl",
        '{"text": "fine", "label": "Animal"}\n["a", "list"]\n',
        [],
        r"list\.jsonl line 2 is not a JSON object: a list",
    ),
    (
        "parquet-that-is-not-parquet",
        "fake.parquet",
        "text,label\nhello,Animal\n",
        [],
        r"cannot read .*fake\.parquet.*is it a Parquet file\?",
    ),
    (
        "unsupported-extension",
        "data.txt",
        "text,label\nhello,Animal\n",
        [],
        r"unsupported file type '\.txt'",
    ),
]


@pytest.mark.parametrize(
    ("name", "content", "flags", "expected"),
    [c[1:] for c in DATA_CASES],
    ids=[c[0] for c in DATA_CASES],
)
def test_bad_data_file_is_refused(capsys, project, name, content, flags, expected):
    write(project / name, content)
    refused(capsys, project, ["prepare-data", "--dataset", name, *flags], expected)


def test_unseen_validation_labels_are_refused(capsys, project):
    src = project / "src"
    src.mkdir()
    write(src / "train.csv", "text,label\n" + toy_rows(4))
    write(src / "validation.csv", "text,label\nsome words,Spaceship\nother words,Animal\n")
    refused(
        capsys,
        project,
        ["prepare-data", "--dataset", "src"],
        r"validation has labels that train does not have: Spaceship",
    )


def test_unseen_test_labels_are_refused(capsys, project):
    src = project / "src"
    src.mkdir()
    write(src / "train.csv", "text,label\n" + toy_rows(4))
    write(src / "test.csv", "text,label\nsome words,Rocket\nother words,Galaxy\n")
    refused(
        capsys,
        project,
        ["prepare-data", "--dataset", "src"],
        r"test has labels that train does not have: Galaxy, Rocket",
    )


def test_folder_without_data_files_is_refused(capsys, project):
    (project / "notes").mkdir()
    write(project / "notes" / "readme.md", "no data here\n")
    refused(capsys, project, ["prepare-data", "--dataset", "notes"], r"holds no CSV")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_a_pipe_as_dataset_is_refused_not_read(capsys, project):
    """Reading a FIFO would block forever waiting for a writer."""
    os.mkfifo(project / "pipe")
    refused(capsys, project, ["prepare-data", "--dataset", "pipe"], r"not a regular file or folder")


def test_unknown_dataset_alias(capsys, project):
    refused(
        capsys,
        project,
        ["prepare-data", "--dataset", "dbpedai"],
        r"--dataset dbpedai: no such file or folder, and not an alias "
        r"\(dbpedia, ag_news\)",
    )


def test_hub_dataset_offline(capsys, project, monkeypatch):
    import datasets

    def unreachable(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'org/name' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    refused(
        capsys,
        project,
        ["prepare-data", "--dataset", "org/name"],
        r"cannot reach the Hugging Face Hub.*local CSV/JSONL/Parquet",
    )


@pytest.mark.parametrize("name", ["../escaped", "<absolute>", "..", "a/b"])
def test_a_name_cannot_escape_the_data_dir(capsys, project, name):
    outside = project.parent / "escaped"
    name = name.replace("<absolute>", str(outside))
    refused(
        capsys,
        project,
        ["prepare-data", "--dataset", "toy.csv", "--name", name],
        r"--name .* must be a plain folder name",
    )
    assert not outside.exists()


def test_a_corrupt_prepared_data_set_is_refused(capsys, project):
    assert run_cli(["prepare-data", "--dataset", "toy.csv"]) == 0
    capsys.readouterr()
    write(project / "data" / "toy" / "dataset_info.json", '{"label_names": ["Animal", ')
    refused(
        capsys,
        project,
        ["eval-teacher", "--dataset", "toy", "--teacher-model", "nowhere"],
        r"dataset_info\.json: unreadable .*run prepare-data again",
    )


# --------------------------------------------------------------------------- flags

FLAG_CASES = [
    (
        ["distill", "--temperature", "hot"],
        r"--temperature must be a number > 0 or auto \(got 'hot'\)",
    ),
    (["distill", "--epochs", "three"], r"argument --epochs: invalid int value: 'three'"),
    (["distill", "--batch-size", "2.5"], r"argument --batch-size: invalid int value: '2.5'"),
    (["distill", "--temperature", "0"], r"--temperature must be > 0 or auto \(got 0.0\)"),
    (["distill", "--temperature", "-3"], r"--temperature must be > 0"),
    (["distill", "--temperature", "inf"], r"--temperature must be a finite number"),
    (["distill", "--alpha", "1.01"], r"--alpha must be in \[0, 1\]"),
    (["distill", "--alpha", "nan"], r"--alpha must be a finite number"),
    (["distill", "--epochs", "-1"], r"--epochs must be >= 1 \(got -1\)"),
    (["distill", "--batch-size", "0"], r"--batch-size must be >= 1 \(got 0\)"),
    (["distill", "--learning-rate", "inf"], r"--learning-rate must be a finite number"),
    (["distill", "--max-length", "1"], r"--max-length must be >= 2"),
    (["distill", "--validation-split", "1"], r"--validation-split must be between 0 and 1"),
    (["prepare-data", "--validation-split", "1.5"], r"--validation-split must be between 0 and 1"),
    (
        ["prepare-data", "--validation-split", "0.6", "--test-split", "0.5"],
        r"--validation-split \+ --test-split must leave rows to train on",
    ),
    (["sweep", "--alpha", "0.5,x"], r"--alpha must be comma-separated numbers"),
    (["sweep", "--temperature", "2,inf"], r"--temperature values must be finite"),
    (["eval-teacher", "--temperatures", "1,-2"], r"--temperatures must be comma-separated"),
    (["distill", "--device", "tpu"], r"argument --device: invalid choice: 'tpu'"),
    (["finetune-teacher", "--name", "../../etc"], r"--name '../../etc' must be a plain folder"),
]


@pytest.mark.parametrize(("argv", "expected"), FLAG_CASES, ids=[" ".join(a) for a, _ in FLAG_CASES])
def test_bad_flag_is_refused(capsys, project, argv, expected):
    refused(capsys, project, argv, expected)


def test_invalid_repo_id_is_refused_before_the_hub(capsys, project, monkeypatch):
    import huggingface_hub

    def must_not_be_called(**kwargs):
        raise AssertionError("snapshot_download was called")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", must_not_be_called)
    refused(
        capsys,
        project,
        ["download-model", "--model", "../../etc"],
        r"--model '../../etc': not a Hub repo id",
    )


# --------------------------------------------------------------------------- model folders


def model_copy(source: Path, project: Path, name: str) -> Path:
    target = project / "models" / name
    shutil.copytree(source, target)
    return target


def distill_argv(teacher: str, student: str, *extra: str) -> list[str]:
    return [
        "distill",
        "--dataset",
        "toy.csv",
        "--teacher-model",
        teacher,
        "--student-model",
        student,
        "--output-dir",
        "outputs",
        "--epochs",
        "1",
        "--mixed-precision",
        "no",
        *extra,
    ]


@pytest.fixture()
def models(project, tiny_models) -> dict[str, str]:
    """The tiny teacher and student, copied into the project (so damage stays local)."""
    return {
        "teacher": str(model_copy(tiny_models["bert_teacher"], project, "teacher")),
        "student": str(model_copy(tiny_models["bert_student"], project, "student")),
    }


def test_model_path_that_is_a_file(capsys, project, models):
    refused(
        capsys,
        project,
        distill_argv("toy.csv", models["student"]),
        r"--teacher-model toy\.csv: a file; pass a model folder",
    )


def test_missing_model_folder(capsys, project, models):
    refused(
        capsys,
        project,
        distill_argv(models["teacher"], "models/nope"),
        r"--student-model models/nope: no such folder",
    )


def test_corrupt_safetensors(capsys, project, models):
    weights = Path(models["teacher"]) / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # a truncated download
    refused(
        capsys,
        project,
        distill_argv(models["teacher"], models["student"]),
        r"--teacher-model .*teacher: cannot load it",
    )


def test_corrupt_config_json(capsys, project, models):
    write(Path(models["student"]) / "config.json", "{not json")
    refused(
        capsys,
        project,
        distill_argv(models["teacher"], models["student"]),
        r"--student-model .*student: cannot load it",
    )


def test_tokenizer_missing_its_files(capsys, project, models):
    folder = Path(models["teacher"])
    for f in folder.iterdir():
        if "token" in f.name or f.name in ("vocab.txt", "special_tokens_map.json"):
            f.unlink()
    refused(
        capsys,
        project,
        distill_argv(models["teacher"], models["student"]),
        r"teacher: the tokenizer has no vocabulary .* are missing",
    )


def test_remote_code_model_without_trust_remote_code(capsys, project, models):
    folder = Path(models["teacher"])
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "kdistill_custom"
    config["auto_map"] = {
        "AutoConfig": "custom.CustomConfig",
        "AutoModelForSequenceClassification": "custom.CustomModel",
    }
    write(folder / "config.json", json.dumps(config))
    marker = project / "code-ran"
    write(folder / "custom.py", f"open({str(marker)!r}, 'w').write('ran')\n")
    refused(
        capsys,
        project,
        distill_argv(str(folder), models["student"]),
        r"needs its own Python code .*pass --trust-remote-code",
    )
    assert not marker.exists()


def test_pickle_only_model_without_allow_pickle(capsys, project, models):
    import torch
    from safetensors.torch import load_file

    folder = Path(models["teacher"])
    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    refused(
        capsys,
        project,
        distill_argv(str(folder), models["student"]),
        r"only weights are pickle files \(pytorch_model\.bin\).*--allow-pickle",
    )


def test_teacher_labels_that_do_not_match(capsys, project, models):
    folder = Path(models["teacher"])
    config = json.loads((folder / "config.json").read_text())
    config["id2label"] = {"0": "Animal", "1": "Sport", "2": "Film", "3": "Company"}
    config["label2id"] = {v: int(k) for k, v in config["id2label"].items()}
    write(folder / "config.json", json.dumps(config))
    refused(
        capsys,
        project,
        distill_argv(str(folder), models["student"]),
        r"missing from the teacher: Building; teacher-only: Sport",
    )


def test_teacher_with_unnamed_labels(capsys, project, models):
    folder = Path(models["teacher"])
    config = json.loads((folder / "config.json").read_text())
    config["id2label"] = {str(i): f"LABEL_{i}" for i in range(4)}
    config["label2id"] = {f"LABEL_{i}": i for i in range(4)}
    write(folder / "config.json", json.dumps(config))
    refused(
        capsys,
        project,
        distill_argv(str(folder), models["student"]),
        r"the teacher's labels are unnamed",
    )


def test_untrained_head_teacher(capsys, project, models):
    """A classifier checkpoint whose head was never trained: its logits would be random. (A bare
    encoder, with no head at all, is an embedding teacher since the no-label work.)"""
    folder = Path(models["student"])
    config = json.loads((folder / "config.json").read_text())
    config["architectures"] = ["BertForSequenceClassification"]
    (folder / "config.json").write_text(json.dumps(config))
    refused(
        capsys,
        project,
        distill_argv(models["student"], models["student"]),
        r"no trained classification head .*--allow-untrained-teacher",
    )


def test_teacher_at_chance_leaves_no_run_folder(capsys, project, models):
    """Refused after the run folder is made (the teacher is measured first): it goes too.
    Every text is the same, so any teacher names one class for all and scores chance."""
    rows = "".join(f"the same words,{c}\n" for c in CLASSES for _ in range(10))
    write(project / "toy.csv", "text,label\n" + rows)
    refused(
        capsys,
        project,
        distill_argv(models["student"], models["student"], "--allow-untrained-teacher"),
        r"at or below chance.*--allow-weak-teacher",
    )


# --------------------------------------------------------------------------- the environment


def test_output_dir_under_a_file(capsys, project, models):
    write(project / "outputs" / "taken", "a file\n")
    refused(
        capsys,
        project,
        distill_argv(models["teacher"], models["student"], "--output-dir", "outputs/taken/runs"),
        r"outputs/taken.*(Not a directory|a file)",
    )


def deny_writes_under(monkeypatch, folder: Path) -> None:
    """Root may write anywhere, so a read-only folder is simulated where every write starts:
    creating a file or folder inside `folder` raises PermissionError, as for a user without
    write permission."""
    real_mkdir, real_open = os.mkdir, os.open
    folder = folder.resolve()

    def inside(path) -> bool:
        return Path(os.path.abspath(os.fspath(path))).is_relative_to(folder)

    def mkdir(path, *args, **kwargs):
        if inside(path):
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return real_mkdir(path, *args, **kwargs)

    def open_(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and inside(path):
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", mkdir)
    monkeypatch.setattr(os, "open", open_)


def test_data_dir_without_write_permission(capsys, project, monkeypatch):
    deny_writes_under(monkeypatch, project / "data")
    refused(
        capsys,
        project,
        ["prepare-data", "--dataset", "toy.csv"],
        r"data.*Permission denied \(no permission; choose a folder you can write",
    )


def test_output_dir_without_write_permission(capsys, project, models, monkeypatch):
    deny_writes_under(monkeypatch, project / "outputs")
    refused(
        capsys,
        project,
        distill_argv(models["teacher"], models["student"]),
        r"outputs.*Permission denied",
    )


def disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_full_disk_while_preparing_data(capsys, project, monkeypatch):
    from datasets import Dataset

    monkeypatch.setattr(Dataset, "to_parquet", disk_full)
    refused(
        capsys,
        project,
        ["prepare-data", "--dataset", "toy.csv"],
        r"No space left on device \(the disk is full",
    )


def test_full_disk_when_a_run_starts(capsys, project, models, monkeypatch):
    """The first write into the run folder fails: the empty `.partial` folder is removed."""
    monkeypatch.setattr(os, "fsync", disk_full)
    refused(
        capsys,
        project,
        distill_argv(models["teacher"], models["student"], "--allow-weak-teacher"),
        r"No space left on device \(the disk is full",
    )


# --------------------------------------------------------------------------- big and strange


def test_a_5_mb_text_is_truncated_not_fatal(capsys, project, models):
    """One 5 MB row (a whole book pasted into a cell) trains like any other: it is cut at
    --max-length tokens, quickly, by both tokenizers."""
    import time

    huge = "species " * (5 * 2**20 // 8)
    rows = toy_rows(6) + f"{huge},Animal\n" + "x" * (5 * 2**20) + ",Film\n"
    write(project / "toy.csv", "text,label\n" + rows)
    start = time.perf_counter()
    code = run_cli(
        distill_argv(
            models["teacher"], models["student"], "--allow-weak-teacher", "--batch-size", "8"
        )
    )
    err = capsys.readouterr().err
    assert code == 0, err
    assert time.perf_counter() - start < 120
    runs = list((project / "outputs").iterdir())
    assert len(runs) == 1 and (runs[0] / "best_model" / "model.safetensors").is_file()


def test_a_real_process_prints_one_line_and_no_traceback(project):
    """The console entry point in a new process: the last stderr line is the error, there is
    exactly one error line, and nothing else on stderr is a traceback."""
    write(project / "semi.csv", "text;label\n" + toy_rows(3).replace(",", ";"))
    done = subprocess.run(
        [sys.executable, "-m", "kdistill", "prepare-data", "--dataset", "semi.csv"],
        capture_output=True,
        text=True,
        cwd=project,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO / "src")},
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr + done.stdout
    errors = [line for line in done.stderr.splitlines() if ": error: " in line]
    assert len(errors) == 1 and done.stderr.strip().splitlines()[-1] == errors[0]
    assert "separated by semicolons" in errors[0]
    assert sorted(tree(project)) == ["data", "models", "outputs", "semi.csv", "toy.csv"]


def test_only_runs_that_never_trained_are_discarded(tmp_path):
    from kdistill.training.runs import discard_unstarted

    unstarted = tmp_path / "a.partial"
    (unstarted / "logs").mkdir(parents=True)
    write(unstarted / "config.json", "{}")
    trained = tmp_path / "b.partial"
    (trained / "best_model").mkdir(parents=True)
    write(trained / "config.json", "{}")
    failed = tmp_path / "c.partial"
    failed.mkdir()
    write(failed / "history.json", '{"failed": "RuntimeError: boom"}')
    assert discard_unstarted(unstarted) and not unstarted.exists()
    assert not discard_unstarted(trained) and (trained / "best_model").is_dir()
    assert not discard_unstarted(failed) and (failed / "history.json").is_file()


def test_only_environment_os_errors_become_one_line():
    from kdistill.errors import environment_error

    full = environment_error(OSError(errno.ENOSPC, "No space left on device", "out/x.json"))
    assert str(full) == (
        "out/x.json: No space left on device (the disk is full; free some space or write elsewhere)"
    )
    assert environment_error(OSError(errno.EIO, "Input/output error")) is None
    assert environment_error(OSError("no errno")) is None


def test_cutting_a_long_text_before_tokenising_keeps_its_tokens(tiny_models):
    from datasets import Dataset
    from transformers import AutoTokenizer

    from kdistill.data.batches import MIN_CHARS_KEPT, tokenize

    tok = AutoTokenizer.from_pretrained(tiny_models["bert_teacher"])
    text = "species bird of the family, " * (3 * MIN_CHARS_KEPT // 28)
    assert len(text) > 2 * MIN_CHARS_KEPT
    got = tokenize(Dataset.from_dict({"text": [text]}), {"t": tok}, 200)["t_input_ids"][0]
    assert got == tok(text, truncation=True, max_length=200)["input_ids"]
