"""The command line: every command in the seed document parses into the config it describes, and
bad input ends in one line on stderr with exit status 2, never a traceback."""

import re
import shlex
import subprocess
import sys

import pytest
from conftest import REPO, build_tiny_bert

from kdistill.cli import COMMANDS, build_parser, config_from_args, main
from kdistill.config import CompareConfig, DistillConfig, DownloadConfig, PrepareDataConfig

SEED_DOC = REPO.parent / "shared" / "seed" / "knowledge-distillation-workflow.md"
SCRIPTS = {
    "download_deepseek_model.py": ("download-model", DownloadConfig),
    "explore_datasets.py": ("prepare-data", PrepareDataConfig),
    "train_soft_distillation.py": ("distill", DistillConfig),
    "compare_models.py": ("compare", CompareConfig),
}


def seed_command_lines() -> list[str]:
    """`python scripts/<x>.py ...` lines of the seed's code blocks, continuations joined."""
    blocks, current = [], None
    for raw in SEED_DOC.read_text().splitlines():
        if raw.startswith("```"):
            if current is None:
                current = []
            else:
                blocks.append("\n".join(current))
                current = None
        elif current is not None:
            current.append(raw)
    lines = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("#")[0].strip()
            if line.startswith("python scripts/"):
                lines.append(line)
    return lines


def test_the_seed_document_has_the_commands_we_expect():
    lines = seed_command_lines()
    scripts = {shlex.split(line)[1].split("/")[-1] for line in lines}
    assert set(SCRIPTS) == scripts
    assert sum("train_soft_distillation.py" in line for line in lines) >= 6


@pytest.mark.parametrize("line", seed_command_lines())
def test_every_seed_command_line_parses_into_its_config(line):
    argv = shlex.split(line)
    script = argv[1].split("/")[-1]
    command, cls = SCRIPTS[script]
    parser = build_parser(script, command)
    config = config_from_args(cls, parser.parse_args(argv[2:]))
    # Every flag on the line reached the config with the value the seed wrote.
    flags = dict(zip(argv[2::2], argv[3::2], strict=False))
    for flag, value in flags.items():
        field = flag.lstrip("-").replace("-", "_")
        got = getattr(config, field)
        assert str(got) == value or float(got) == float(value), (flag, got, value)


def test_seed_defaults_are_the_documented_ones():
    config = config_from_args(DistillConfig, build_parser("t", "distill").parse_args([]))
    assert (config.temperature, config.alpha, config.epochs, config.batch_size) == (3.0, 0.7, 3, 4)
    assert config.max_length == 128
    assert config.teacher_model == "models/DeepSeek-R1-Distill-Qwen-1.5B"
    assert config.student_model == "Qwen/Qwen2.5-0.5B"
    assert config.output_dir == "outputs/student_soft_distill"
    download = config_from_args(DownloadConfig, build_parser("t", "download-model").parse_args([]))
    assert download.model == "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"
    prep = config_from_args(PrepareDataConfig, build_parser("t", "prepare-data").parse_args([]))
    assert (prep.dataset, prep.validation_split) == ("dbpedia", 0.2)


def one_line_error(capsys, argv, prog="kdistill", command=None) -> str:
    with pytest.raises(SystemExit) as exc:
        code = main(argv, prog=prog, command=command)
        raise SystemExit(code)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    assert re.match(rf"{re.escape(prog)}( [a-z-]+)?: error: ", err), err
    return err


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["distill", "--temperature", "0"], "--temperature must be > 0"),
        (["distill", "--temperature", "-2"], "--temperature must be > 0"),
        (["distill", "--alpha", "1.5"], r"--alpha must be in \[0, 1\]"),
        (["distill", "--alpha", "-0.1"], r"--alpha must be in \[0, 1\]"),
        (["distill", "--batch-size", "0"], "--batch-size must be >= 1"),
        (["distill", "--epochs", "0"], "--epochs must be >= 1"),
        (["distill", "--max-train-samples", "0"], "--max-train-samples must be >= 1"),
        (["distill", "--temperature", "hot"], "--temperature must be a number > 0 or auto"),
        (["distill", "--mixed-precision", "fp8"], "invalid choice: 'fp8'"),
        (["prepare-data", "--validation-split", "1"], "--validation-split must be between"),
        (
            ["compare", "--student-model", "s", "--bootstrap-resamples", "10"],
            r"--bootstrap-resamples must be in \[100, 100000\]",
        ),
        (["distill", "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    ],
)
def test_bad_flags_fail_in_one_line(capsys, argv, expected):
    assert re.search(expected, one_line_error(capsys, argv))


def test_wrapper_scripts_fail_in_one_line_under_their_own_name(capsys):
    err = one_line_error(
        capsys, ["--alpha", "7"], prog="train_soft_distillation.py", command="distill"
    )
    assert "--alpha must be in [0, 1]" in err


@pytest.fixture()
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_wrong_text_column_names_the_flag(capsys, in_tmp, labelled_csv):
    err = one_line_error(
        capsys, ["prepare-data", "--dataset", str(labelled_csv), "--text-column", "body"]
    )
    assert "--text-column" in err and "body" in err and "text" in err  # lists what exists


def test_empty_file_is_one_line(capsys, in_tmp):
    (in_tmp / "empty.csv").write_text("text,label\n")
    err = one_line_error(capsys, ["prepare-data", "--dataset", "empty.csv"])
    assert "empty.csv" in err


def test_unknown_label_in_a_split_is_one_line(capsys, in_tmp, labelled_csv):
    folder = in_tmp / "src"
    folder.mkdir()
    (folder / "train.csv").write_text(labelled_csv.read_text())
    (folder / "test.csv").write_text("text,label\nsome words here,Spaceship\n")
    err = one_line_error(capsys, ["prepare-data", "--dataset", str(folder)])
    assert "Spaceship" in err


def test_too_few_samples_for_the_classes(capsys, in_tmp, labelled_csv, tiny_models):
    err = one_line_error(
        capsys,
        [
            "distill",
            "--dataset",
            str(labelled_csv),
            "--teacher-model",
            str(tiny_models["bert_teacher"]),
            "--student-model",
            str(tiny_models["bert_student"]),
            "--max-train-samples",
            "3",
        ],
    )
    assert "--max-train-samples 3 is smaller than the 4 classes" in err


def test_missing_teacher_folder_says_to_download(capsys, in_tmp, labelled_csv):
    (in_tmp / "models").mkdir()
    err = one_line_error(capsys, ["distill", "--dataset", str(labelled_csv)])
    assert "models/DeepSeek-R1-Distill-Qwen-1.5B: no such folder" in err
    assert "download" in err


def test_teacher_with_an_untrained_head_is_refused(capsys, in_tmp, labelled_csv, tiny_models):
    err = one_line_error(
        capsys,
        [
            "distill",
            "--dataset",
            str(labelled_csv),
            "--teacher-model",
            str(tiny_models["qwen_lm"]),
            "--student-model",
            str(tiny_models["bert_student"]),
            "--teacher-mode",
            "classifier",
        ],
    )
    assert "no trained classification head" in err and "--allow-untrained-teacher" in err


def test_teacher_with_other_labels_is_refused(capsys, in_tmp, labelled_csv, tmp_path_factory):
    other = build_tiny_bert(
        tmp_path_factory.mktemp("other") / "t", ["Animal", "Sport", "Film", "Company"]
    )
    err = one_line_error(
        capsys,
        [
            "distill",
            "--dataset",
            str(labelled_csv),
            "--teacher-model",
            str(other),
            "--student-model",
            str(other),
        ],
    )
    assert "missing from the teacher: Building" in err and "teacher-only: Sport" in err


def test_scripts_run_as_files(in_tmp, labelled_csv):
    """The seed runs `python scripts/explore_datasets.py ...`: the real file, a new process."""
    script = REPO / "scripts" / "explore_datasets.py"
    done = subprocess.run(
        [sys.executable, str(script), "--dataset", str(labelled_csv), "--validation-split", "0.2"],
        capture_output=True,
        text=True,
        cwd=in_tmp,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert (in_tmp / "data" / "toy" / "train.parquet").is_file()
    assert "validation" in done.stdout and "saved to data/toy" in done.stdout

    bad = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "train_soft_distillation.py"), "--alpha", "2"],
        capture_output=True,
        text=True,
        cwd=in_tmp,
        timeout=300,
    )
    assert bad.returncode == 2
    assert bad.stderr.strip() == (
        "train_soft_distillation.py: error: --alpha must be in [0, 1] (got 2.0)"
    )


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_prints_its_help(command, capsys):
    """argparse %-formats help text; a bare "95%" in a field's help once broke compare --help."""
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert f"usage: kdistill {command}" in capsys.readouterr().out
