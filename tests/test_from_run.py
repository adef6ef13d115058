"""Commands given a distill run score on the run's split with the run's teacher: a prompt
teacher shows the few-shot examples the run recorded, and unprepared data is split by the run's
--seed, not the command's own; where that cannot hold, the command refuses in one line."""

import json
import shutil
from pathlib import Path

import pytest
from conftest import write_toy_csv

from kdistill import compare as kcompare
from kdistill.cli import main
from kdistill.data import prepare as kdata
from kdistill.data import sampling as ksampling
from kdistill.teachers import cache

RUN_SEED = 1  # distill's; the other commands' default --seed is 42
QUICK = ["--mixed-precision", "no", "--latency-rows", "2", "--repeats", "1"]


@pytest.fixture(scope="module")
def prompt_run(tmp_path_factory, tiny_models) -> dict:
    """`distill --seed 1` on a raw CSV from a 2-shot prompt teacher, on a subsample of train:
    the case where every command used to pick its own examples and its own split."""
    root = tmp_path_factory.mktemp("prompt_run")
    csv = write_toy_csv(root / "toy.csv", 30)
    out = root / "runs"
    flags = (
        f"--few-shot 2 --max-train-samples 40 --seed {RUN_SEED} --max-length 48 --epochs 1 "
        "--batch-size 8 --mixed-precision no --allow-weak-teacher --teacher-cache off"
    ).split()
    models = ["--teacher-model", str(tiny_models["qwen_lm"])]
    models += ["--student-model", str(tiny_models["bert_student"])]
    paths = ["--dataset", str(csv), "--data-dir", str(root / "data"), "--output-dir", str(out)]
    assert main(["distill", *models, *paths, *flags]) == 0
    run = next(out.iterdir())
    return {"csv": csv, "run": run, "config": json.loads((run / "config.json").read_text())}


def run_split(prompt_run) -> kdata.LabelledData:
    """The raw CSV split as distill split it for the run."""
    return kdata.build(str(prompt_run["csv"]), None, None, 0.2, RUN_SEED)


def test_distill_records_the_shots_and_the_split(prompt_run):
    config = prompt_run["config"]
    record = config["teacher"]["few_shot"]
    assert record["k"] == 2 and record["seed"] == RUN_SEED and len(record["rows"]) == 2
    # Whole texts, from the subsampled train the student saw.
    train = run_split(prompt_run).splits["train"]
    picked_from = ksampling.subsample(train, 40, RUN_SEED, "--max-train-samples")
    assert {t for t, _ in record["rows"]} <= set(picked_from["text"])
    split = config["data"]["split"]
    assert split["seed"] == RUN_SEED and split["train_rows"] == len(train)
    assert split["train_digest"] == kdata.rows_digest(train)


@pytest.fixture(scope="module")
def compared(prompt_run, tmp_path_factory, tiny_models) -> list[dict]:
    """compare --students RUN on validation, its real scoring wrapped to see each model's
    settings and the rows it scores."""
    seen: list[dict] = []
    real = kcompare.score_model

    def spy(wrapper, rows, *args, **kwargs):
        seen.append({"settings": wrapper.settings(), "texts": list(rows["text"])})
        return real(wrapper, rows, *args, **kwargs)

    root = tmp_path_factory.mktemp("compared")
    args = ["compare", "--dataset", str(prompt_run["csv"]), "--students", str(prompt_run["run"])]
    args += ["--teacher-model", str(tiny_models["qwen_lm"]), "--few-shot", "2"]
    args += ["--split", "validation", "--output-dir", str(root / "cmp"), *QUICK]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(kcompare, "score_model", spy)
        mp.chdir(root)
        assert main(args) == 0
    return seen


def test_compare_scores_the_runs_validation_rows(prompt_run, compared):
    """Before: compare split the raw CSV by its own --seed 42, so its validation held rows the
    student (split by --seed 1) trained on."""
    ran = run_split(prompt_run)
    assert len(compared) == 2
    for model in compared:  # teacher and student alike
        assert sorted(model["texts"]) == sorted(ran.splits["validation"]["text"])
        assert not set(model["texts"]) & set(ran.splits["train"]["text"])


def test_compare_shows_the_teacher_the_runs_few_shot_examples(prompt_run, compared):
    """Before: compare picked its 2 examples from the whole train split, not from the run's
    --max-train-samples subsample, so agreement was measured against another prompt."""
    assert compared[0]["settings"] == prompt_run["config"]["teacher"]["settings"]


def eval_teacher_on(teacher: str, tmp_path: Path, monkeypatch, *extra: str) -> tuple[dict, list]:
    """eval-teacher's report, and the texts it scored (its real scoring wrapped)."""
    scored: list[list[str]] = []
    real = cache.compute_teacher_logits

    def spy(teacher, encoded, *args, **kwargs):
        scored.append(list(encoded["text"]))
        return real(teacher, encoded, *args, **kwargs)

    monkeypatch.setattr(cache, "compute_teacher_logits", spy)
    monkeypatch.chdir(tmp_path)
    report = tmp_path / "teacher.json"
    args = ["eval-teacher", "--teacher-model", teacher, "--output", str(report), *extra]
    assert main([*args, "--mixed-precision", "no"]) == 0
    return json.loads(report.read_text()), scored[0]


def test_eval_teacher_given_the_run_asks_its_teacher_as_it_taught(
    prompt_run, tmp_path, monkeypatch
):
    got, texts = eval_teacher_on(str(prompt_run["run"]), tmp_path, monkeypatch)
    config = prompt_run["config"]
    assert got["teacher"] == config["teacher"]["model"] and got["mode"] == "prompt"
    assert got["settings"] == config["teacher"]["settings"]  # same prompt, shots, words
    assert sorted(texts) == sorted(run_split(prompt_run).splits["validation"]["text"])


def test_a_run_from_before_the_record_gets_its_shots_picked_again(
    prompt_run, tmp_path, monkeypatch
):
    old = tmp_path / "old_run"
    shutil.copytree(prompt_run["run"], old)
    config = json.loads((old / "config.json").read_text())
    del config["teacher"]["few_shot"], config["data"]["split"]
    (old / "config.json").write_text(json.dumps(config))
    got, _ = eval_teacher_on(str(old), tmp_path, monkeypatch)
    assert got["settings"] == config["teacher"]["settings"]


def test_eval_teacher_without_a_run_keeps_its_own_flags(tmp_path, monkeypatch, tiny_models):
    """A plain model as --teacher-model: nothing is taken from anywhere else."""
    csv = write_toy_csv(tmp_path / "toy.csv", 10)
    flags = ["--dataset", str(csv), "--few-shot", "1", "--seed", "3"]
    got, texts = eval_teacher_on(str(tiny_models["qwen_lm"]), tmp_path, monkeypatch, *flags)
    assert got["run"] is None and len(got["settings"]["few_shot"]) == 1
    assert Path(got["teacher"]) == tiny_models["qwen_lm"]
    assert sorted(texts) == sorted(
        kdata.build(str(csv), None, None, 0.2, 3).splits["validation"]["text"]
    )


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def test_another_few_shot_than_the_runs_is_refused(prompt_run, tmp_path, capsys, tiny_models):
    args = ["compare", "--dataset", str(prompt_run["csv"]), "--students", str(prompt_run["run"])]
    args += ["--teacher-model", str(tiny_models["qwen_lm"]), "--few-shot", "3"]
    assert main([*args, "--split", "validation", "--output-dir", str(tmp_path), *QUICK]) == 2
    assert "--few-shot 3: " in one_line_error(capsys)


def test_data_split_otherwise_than_the_run_is_refused(prompt_run, tmp_path, capsys):
    """The same CSV prepared with another seed puts some of the run's train rows in validation:
    the train digests differ, so compare refuses instead of scoring them."""
    data_dir = tmp_path / "data"
    prepare = ["prepare-data", "--dataset", str(prompt_run["csv"]), "--data-dir", str(data_dir)]
    assert main([*prepare, "--seed", "42"]) == 0
    capsys.readouterr()
    args = ["compare", "--dataset", str(data_dir / "toy"), "--students", str(prompt_run["run"])]
    assert main([*args, "--split", "validation", "--output-dir", str(tmp_path), *QUICK]) == 2
    err = one_line_error(capsys)
    assert "is not split as the run's was" in err and f"seed {RUN_SEED}" in err


def test_runs_split_by_different_seeds_are_refused_together(prompt_run, tmp_path, capsys):
    other = tmp_path / "other_run"
    shutil.copytree(prompt_run["run"], other)
    config = json.loads((other / "config.json").read_text())
    config["seed"], config["data"]["split"]["train_digest"] = 7, "0" * 64
    (other / "config.json").write_text(json.dumps(config))
    students = f"{prompt_run['run']},{other}"
    args = ["compare", "--dataset", str(prompt_run["csv"]), "--students", students]
    assert main([*args, "--split", "validation", "--output-dir", str(tmp_path), *QUICK]) == 2
    assert "split differently" in one_line_error(capsys)
