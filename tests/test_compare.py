"""`kdistill compare` on tiny real runs: the numbers are the models' own (checked against
scikit-learn and a fresh forward pass), the JSON keeps its schema, the report files are real,
and bad input ends in one line. Plus the metric and timing functions on hand-made cases."""

import json
import re
import runpy
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import CLASSES, REPO, build_tiny_bert, write_toy_csv

from kdistill.cli import main
from kdistill.evaluation.metrics import (
    agreement,
    classification_metrics,
    confusion,
    expected_calibration_error,
    mean_kl,
    measure_speed,
    per_class_scores,
)

SCHEMA = REPO / "src" / "kdistill" / "schemas" / "comparison_results.schema.json"
OUT_DIR = re.compile(r"^toy_test_\d{8}_\d{6}(_\d+)?$")


# --------------------------------------------------------------------------- pure functions


def test_per_class_scores_and_confusion_on_a_hand_computed_case():
    labels, preds = torch.tensor([0, 0, 1, 1, 2]), torch.tensor([0, 1, 1, 1, 0])
    scores = per_class_scores(labels, preds, CLASSES)
    assert list(scores) == CLASSES
    assert scores["Animal"] == pytest.approx(
        {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    )
    assert scores["Building"] == pytest.approx(
        {"precision": 2 / 3, "recall": 1.0, "f1": 0.8, "support": 2}
    )
    # Never predicted: precision 0, not NaN; absent altogether: zeros and support 0.
    assert scores["Company"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert scores["Film"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert confusion(labels, preds, 4) == [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]]
    logits = torch.nn.functional.one_hot(preds, 4).float()
    metrics = classification_metrics(logits, labels, 4)
    # Film has no row in the split: macro-F1 averages the three classes present, not four.
    present = [s["f1"] for s in scores.values() if s["support"]]
    assert metrics["macro_f1"] == pytest.approx(sum(present) / 3)
    assert metrics["macro_f1_classes"] == 3


def test_macro_f1_counts_only_the_classes_present_in_the_split():
    """A perfect model on a split that lacks two of four classes has macro-F1 1, not 0.5."""
    from sklearn.metrics import f1_score

    labels = torch.tensor([0, 0, 1, 1, 1])
    perfect = torch.nn.functional.one_hot(labels, 4).float()
    metrics = classification_metrics(perfect, labels, 4)
    assert metrics["macro_f1"] == 1.0 and metrics["macro_f1_classes"] == 2
    # A prediction of an absent class is still an error of the class it should have named.
    preds = torch.tensor([0, 3, 1, 1, 1])
    got = classification_metrics(torch.nn.functional.one_hot(preds, 4).float(), labels, 4)
    assert got["macro_f1"] == pytest.approx(f1_score(labels, preds, labels=[0, 1], average="macro"))
    assert got["macro_f1"] == pytest.approx((2 / 3 + 1.0) / 2)


def test_bootstrap_scores_are_paired_seeded_and_match_the_point_metrics():
    import numpy as np
    from sklearn.metrics import f1_score

    from kdistill.evaluation.metrics import BOOTSTRAP_CELLS, bootstrap_scores, interval

    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 400)
    good = np.where(rng.random(400) < 0.9, y, rng.integers(0, 4, 400))
    same = good.copy()
    boot = bootstrap_scores(y, {"a": good, "b": same}, 4, 1000, seed=1)
    again = bootstrap_scores(y, {"a": good, "b": same}, 4, 1000, seed=1)
    assert np.array_equal(boot["a"]["accuracy"], again["a"]["accuracy"])  # seeded
    # Paired: two identical models differ by exactly 0 on every resample.
    assert np.array_equal(boot["a"]["accuracy"], boot["b"]["accuracy"])
    acc = float((good == y).mean())
    low, high = interval(boot["a"]["accuracy"])
    assert low < acc < high
    # About the binomial width: 1.96 * sqrt(p(1-p)/n) each side.
    half = 1.96 * (acc * (1 - acc) / 400) ** 0.5
    assert (high - low) / 2 == pytest.approx(half, rel=0.2)
    f1 = f1_score(y, good, average="macro")
    low, high = interval(boot["a"]["macro_f1"])
    assert low < f1 < high
    # One resample's numbers are those sklearn gives on that resample's rows: rebuild the first
    # resample from the same generator (chunked exactly as bootstrap_scores draws them).
    chunk = max(1, min(1000, BOOTSTRAP_CELLS // 400))
    idx = np.random.default_rng(1).integers(0, 400, size=(chunk, 400))[0]
    yy, pp = y[idx], good[idx]
    assert boot["a"]["accuracy"][0] == pytest.approx((yy == pp).mean())
    assert boot["a"]["macro_f1"][0] == pytest.approx(
        f1_score(yy, pp, labels=np.unique(yy), average="macro", zero_division=0)
    )


def test_agreement_and_kl_against_hand_computed_values():
    a = torch.tensor([[2.0, 1.0], [0.0, 1.0], [3.0, 0.0]])
    b = torch.tensor([[1.0, 2.0], [0.0, 5.0], [1.0, 0.0]])
    assert agreement(a, b) == pytest.approx(2 / 3)
    assert agreement(a, a) == 1.0 and mean_kl(a, a) == pytest.approx(0.0, abs=1e-7)
    teacher, model = torch.tensor([[0.5, 0.5]]).log(), torch.tensor([[0.9, 0.1]]).log()
    expected = 0.5 * torch.log(torch.tensor(0.5 / 0.9)) + 0.5 * torch.log(torch.tensor(0.5 / 0.1))
    assert mean_kl(teacher, model) == pytest.approx(float(expected), rel=1e-5)
    assert mean_kl(model, teacher) != pytest.approx(mean_kl(teacher, model))  # direction matters


def test_ece_of_constructed_cases():
    # Ten rows all at confidence 0.8, six right: one bin, gap |0.8 - 0.6|.
    probs = torch.tensor([[0.8, 0.1, 0.05, 0.05]]).repeat(10, 1)
    labels = torch.tensor([0] * 6 + [1] * 4)
    assert expected_calibration_error(probs, labels) == pytest.approx(0.2, abs=1e-6)
    # Two bins of five rows: 0.9 all right (gap 0.1), 0.6 with two right (gap 0.2).
    probs = torch.tensor([[0.9, 0.1]] * 5 + [[0.6, 0.4]] * 5)
    labels = torch.tensor([0] * 5 + [0, 0, 1, 1, 1])
    assert expected_calibration_error(probs, labels) == pytest.approx(0.5 * 0.1 + 0.5 * 0.2)


def test_measure_speed_times_what_the_model_costs():
    def model(ms_per_call: float, calls: list[int]):
        def forward(batch: dict[str, torch.Tensor]) -> None:
            n = batch["x"].shape[0]
            calls.append(n)
            time.sleep(ms_per_call / 1000 * (1 if n == 1 else 4))  # the batch costs 4 calls

        return forward

    singles = [{"x": torch.zeros(1, 3)} for _ in range(3)]
    batch = {"x": torch.zeros(8, 3)}
    fast_calls, slow_calls = [], []
    fast = measure_speed(model(2, fast_calls), singles, batch, 3, torch.device("cpu"))
    slow = measure_speed(model(6, slow_calls), singles, batch, 3, torch.device("cpu"))
    assert fast_calls == ([1, 1, 1, 8] * 4)  # one warm-up pass, then three timed
    assert 2.0 <= fast["latency_ms_batch_1"] < 6.0
    assert 8 / 0.008 / 2 < fast["throughput_per_s"] <= 8 / 0.008
    assert slow["latency_ms_batch_1"] > fast["latency_ms_batch_1"]
    assert slow["throughput_per_s"] < fast["throughput_per_s"]


def test_measure_speeds_interleaves_so_drift_hits_every_model_alike():
    """Two identical models on a machine that slows down as it goes (another job starting, a
    clock stepping down): timed one after another the second looks ~2x slower; interleaved
    ABBA, both see the same slowdown and their ratio stays near 1. The spread is reported."""
    import numpy as np

    from kdistill.evaluation.metrics import measure_speeds

    calls: list[str] = []

    def model(name: str):
        def forward(batch: dict[str, torch.Tensor]) -> None:
            calls.append(name)
            time.sleep(0.001 * (1 + len(calls) / 12))  # every call a little slower than the last

        return forward

    singles = [{"x": torch.zeros(1, 3)} for _ in range(2)]
    batch = {"x": torch.zeros(4, 3)}
    inputs = {"a": (model("a"), singles, batch), "b": (model("b"), singles, batch)}
    out = measure_speeds(inputs, 6, torch.device("cpu"), threads=1)
    timed = calls[6:]  # after one warm-up pass of each (2 singles + the batch)
    rounds = [timed[i : i + 6] for i in range(0, len(timed), 6)]
    assert [r[0] for r in rounds] == ["a", "b", "a", "b", "a", "b"]  # ABBA...
    ratio = out["b"]["latency_ms_batch_1"] / out["a"]["latency_ms_batch_1"]
    assert 0.8 < ratio < 1.25, ratio
    for s in out.values():
        low, high = s["latency_ms_batch_1_iqr"]
        assert low <= s["latency_ms_batch_1"] <= high
        low, high = s["throughput_per_s_iqr"]
        assert low <= s["throughput_per_s"] <= high
    assert torch.get_num_threads() >= 1
    # The same two timed one after another: the drift lands on b alone.
    calls.clear()
    one_by_one = {n: measure_speeds({n: inputs[n]}, 6, torch.device("cpu"))[n] for n in inputs}
    sequential = one_by_one["b"]["latency_ms_batch_1"] / one_by_one["a"]["latency_ms_batch_1"]
    assert sequential > 1.4 and np.isfinite(sequential)


# --------------------------------------------------------------------------- the command


def new_child(parent: Path, argv: list[str]) -> Path:
    before = set(parent.iterdir()) if parent.is_dir() else set()
    assert main(argv) == 0
    (created,) = set(parent.iterdir()) - before
    return created


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_models, trained_teacher) -> dict[str, Path]:
    """Toy data with a test split, a distilled student and a cross-entropy-only baseline, both
    one layer of the tiny BERT, taught by a teacher that knows the task."""
    root = tmp_path_factory.mktemp("compare")
    raw = root / "raw"
    raw.mkdir()
    write_toy_csv(raw / "train.csv", 30, seed=0)
    write_toy_csv(raw / "test.csv", 10, seed=7)
    data = new_child(
        root / "data",
        ["prepare-data", "--dataset", str(raw), "--name", "toy", "--data-dir", str(root / "data")],
    )
    common = [
        "distill",
        "--dataset",
        str(data),
        "--teacher-model",
        str(trained_teacher),
        "--student-model",
        str(tiny_models["bert_student"]),
        "--student-layers",
        "1",
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--learning-rate",
        "3e-3",
        "--mixed-precision",
        "no",
    ]
    runs = root / "runs"
    student = new_child(runs, [*common, "--output-dir", str(runs)])
    baseline = new_child(runs, [*common, "--output-dir", str(runs), "--alpha", "0"])
    return {
        "root": root,
        "data": data,
        "teacher": trained_teacher,
        "student": student,
        "baseline": baseline,
    }


def compare_argv(project: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return [
        "compare",
        "--dataset",
        str(project["data"]),
        "--teacher-model",
        str(project["teacher"]),
        "--output-dir",
        str(out),
        "--mixed-precision",
        "no",
        "--latency-rows",
        "6",
        "--repeats",
        "2",
        *extra,
    ]


def test_compare_writes_complete_results_that_are_the_models_own(project, tmp_path, caplog):
    import jsonschema
    from datasets import load_dataset
    from sklearn.metrics import f1_score, precision_recall_fscore_support
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    caplog.set_level("INFO", logger="kdistill")
    out = tmp_path / "comparisons"
    folder = new_child(
        out,
        compare_argv(
            project,
            out,
            "--student-model",
            str(project["student"]),
            "--baseline",
            str(project["baseline"]),
        ),
    )
    assert OUT_DIR.match(folder.name), folder.name
    results = json.loads((folder / "comparison_results.json").read_text())
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate(results, schema, cls=jsonschema.Draft202012Validator)
    broken = json.loads(json.dumps(results))
    del broken["models"][1]["kl_to_teacher"]
    with pytest.raises(jsonschema.ValidationError):  # the schema does constrain the document
        jsonschema.validate(broken, schema, cls=jsonschema.Draft202012Validator)

    ds = results["dataset"]
    assert (ds["name"], ds["split"], ds["rows"]) == ("toy", "test", 40)
    assert ds["label_names"] == CLASSES and ds["class_counts"] == [10, 10, 10, 10]
    teacher, student, baseline = results["models"]
    assert [m["role"] for m in results["models"]] == ["teacher", "student", "baseline"]
    assert (student["name"], baseline["name"]) == (
        project["student"].name,
        project["baseline"].name,
    )
    assert teacher["agreement_with_teacher"] == 1.0 and teacher["kl_to_teacher"] == 0.0
    assert teacher["accuracy"] >= 0.9  # it knows the task: chance is 0.25

    for m in results["models"]:
        cm = m["confusion_matrix"]
        y = [t for t in range(4) for p in range(4) for _ in range(cm[t][p])]
        p = [p for t in range(4) for p in range(4) for _ in range(cm[t][p])]
        assert len(y) == 40
        assert m["accuracy"] == pytest.approx(sum(cm[i][i] for i in range(4)) / 40)
        assert m["macro_f1"] == pytest.approx(f1_score(y, p, average="macro", zero_division=0))
        prec, rec, f1, sup = precision_recall_fscore_support(y, p, labels=range(4), zero_division=0)
        for i, name in enumerate(CLASSES):
            assert m["per_class"][name] == pytest.approx(
                {"precision": prec[i], "recall": rec[i], "f1": f1[i], "support": sup[i]}
            )
        assert m["latency_ms_batch_1"] > 0 and m["throughput_per_s"] > 0
        low, high = m["latency_ms_batch_1_iqr"]  # timed interleaved, with the spread
        assert 0 < low <= m["latency_ms_batch_1"] <= high
        assert m["speedup_vs_teacher"] == pytest.approx(
            teacher["latency_ms_batch_1"] / m["latency_ms_batch_1"]
        )
        assert m["throughput_ratio_vs_teacher"] == pytest.approx(
            m["throughput_per_s"] / teacher["throughput_per_s"]
        )
        assert m["compression_vs_teacher"] == pytest.approx(teacher["parameters"] / m["parameters"])
        assert m["size_on_disk_bytes"] == (Path(m["path"]) / "model.safetensors").stat().st_size
    assert student["compression_vs_teacher"] > 1.0  # one of the two layers kept
    assert teacher["speedup_vs_teacher"] == 1.0

    # The saved confusion matrix is the student's own predictions on the test rows.
    model = AutoModelForSequenceClassification.from_pretrained(student["path"]).eval()
    tok = AutoTokenizer.from_pretrained(student["path"])
    test = load_dataset("parquet", data_files=str(project["data"] / "test.parquet"))["train"]
    with torch.no_grad():
        enc = tok(
            list(test["text"]), padding=True, truncation=True, max_length=128, return_tensors="pt"
        )
        preds = model(**enc).logits.argmax(-1)
    truth = torch.tensor([CLASSES.index(n) for n in test["label"]])
    assert student["confusion_matrix"] == confusion(truth, preds, 4)
    assert student["path"] == str(project["student"] / "best_model")

    for m, run in ((student, project["student"]), (baseline, project["baseline"])):
        assert m["run_dir"] == str(run)
        assert m["run_config"] == json.loads((run / "config.json").read_text())
        assert m["history"] == json.loads((run / "history.json").read_text())
        assert m["training_data"] == {"labeled_rows": 96, "unlabeled_rows": 0}
    assert baseline["run_config"]["alpha"] == 0.0
    gain = results["distillation_gain"]
    assert gain["baseline"] == baseline["name"]
    (g,) = gain["students"]
    assert g["student"] == student["name"]
    assert g["accuracy_points"] == pytest.approx((student["accuracy"] - baseline["accuracy"]) * 100)
    assert g["macro_f1_points"] == pytest.approx((student["macro_f1"] - baseline["macro_f1"]) * 100)
    # How sure each number is: 95% bootstrap intervals, seeded, and a paired one for the gain.
    assert results["speed_settings"]["timing"].startswith("interleaved")
    assert results["intervals"]["resamples"] == 1000 and results["intervals"]["confidence"] == 0.95
    assert results["macro_f1_classes"] == CLASSES  # every class has test rows here
    for m in results["models"]:
        for metric in ("accuracy", "macro_f1"):
            low, high = m[f"{metric}_ci"]
            assert 0 <= low <= m[metric] <= high <= 1
    # 40 rows: the interval has width, unless every row is right (every resample is then 100%)
    low, high = teacher["accuracy_ci"]
    if teacher["accuracy"] == 1.0:
        assert low == high == 1.0
    else:
        assert high - low > 0
    for metric in ("accuracy", "macro_f1"):
        low, high = g[f"{metric}_points_ci"]
        assert low <= g[f"{metric}_points"] <= high
        assert g[f"{metric}_within_noise"] == (low <= 0 <= high)
    assert gain["baseline_valid"] and gain["baseline_problems"] == []
    assert baseline["history"]["teacher"]["used"] is False  # alpha 0: no teacher was run

    png = (folder / "teacher_student_comparison.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    page = (folder / "report.html").read_text()
    assert len(page) > len(png) and page.count("data:image/png;base64,") >= 1
    assert student["name"] in page and baseline["name"] in page
    # the comparison figure and both runs' training curves, inline
    assert "Training curves" in page and page.count("data:image/png;base64,") == 3
    assert gain["not_comparable"] == []
    assert results["files"] == {
        "json": "comparison_results.json",
        "figure": "teacher_student_comparison.png",
        "html": "report.html",
    }
    # The terminal shows the results without opening a file.
    table = next(r.getMessage() for r in caplog.records if "speed-up" in r.getMessage())
    assert student["name"] in table and "distillation gain" in table and "95% CI" in table
    # Each run's recipe beside its name, and what the gain held fixed, read from the runs.
    steps = student["run_config"]["resolved"]["total_optimizer_steps"]
    assert steps == 12  # 96 labelled rows, batch 8, 1 epoch
    assert student["recipe"] == "layers 1; KD alpha 0.7 T 3.0; 96 labelled rows; 1 epoch; 12 steps"
    assert baseline["recipe"] == "layers 1; CE only; 96 labelled rows; 1 epoch; 12 steps"
    assert f"{student['name']}: {student['recipe']}" in table
    assert "optimizer steps 12" in g["matched"] and "rows seen 96" in g["matched"]
    assert g["differs"] == [] and "matched: " in table and "optimizer steps 12" in table
    assert student["recipe"] in page and "optimizer steps 12" in page


def test_the_seed_script_runs_with_the_seed_flags(project, tmp_path, monkeypatch):
    """`python scripts/compare_models.py --teacher-model ... --student-model .../best_model
    --dataset ...`, the seed's Step 4, run as the file itself."""
    monkeypatch.chdir(tmp_path)
    best = project["student"] / "best_model"
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "compare_models.py",
            "--teacher-model",
            str(project["teacher"]),
            "--student-model",
            str(best),
            "--dataset",
            str(project["data"]),
            "--repeats",
            "1",
        ],
    )
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(REPO / "scripts" / "compare_models.py"), run_name="__main__")
    assert done.value.code == 0
    (folder,) = (tmp_path / "outputs" / "comparisons").iterdir()
    results = json.loads((folder / "comparison_results.json").read_text())
    student = results["models"][1]
    # best_model inside a run directory: named after the run, its config and history carried.
    assert student["name"] == project["student"].name and student["run_dir"] == str(best.parent)
    assert student["run_config"]["kind"] == "distill" and results["distillation_gain"] is None


# --------------------------------------------------------------------------- bad input


def one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = [ln for ln in err.splitlines() if "error:" in ln]
    return line.removeprefix("kdistill: error: ")


@pytest.mark.parametrize("flag", ["--student-model", "--students", "--baseline"])
def test_a_student_trained_on_other_labels_is_refused(project, tmp_path, capsys, flag):
    other = build_tiny_bert(tmp_path / "other", ["Animal", "Sport", "Film", "Company"])
    students = [] if flag == "--student-model" else ["--student-model", str(project["student"])]
    err = one_line_error(
        capsys, compare_argv(project, tmp_path / "out", *students, flag, str(other))
    )
    assert err.startswith(f"{flag} {other}: its labels differ"), err
    assert "missing: Building" in err and "extra: Sport" in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_split_the_data_set_lacks_is_refused(project, tmp_path, capsys, labelled_csv):
    assert (
        main(["prepare-data", "--dataset", str(labelled_csv), "--data-dir", str(tmp_path / "data")])
        == 0
    )
    argv = compare_argv(project, tmp_path / "out", "--student-model", str(project["student"]))
    argv[argv.index("--dataset") + 1] = str(tmp_path / "data" / "toy")
    assert one_line_error(capsys, argv) == (
        "--split test: toy has no test split (it has train, validation); pass --split validation"
    )


def test_an_output_dir_that_is_a_file_is_refused(project, tmp_path, capsys):
    (tmp_path / "taken").write_text("not a folder")
    err = one_line_error(
        capsys,
        compare_argv(project, tmp_path / "taken", "--student-model", str(project["student"])),
    )
    assert err.startswith(f"--output-dir {tmp_path / 'taken'}: ") and "is a file" in err


def test_a_missing_student_path_is_refused(project, tmp_path, capsys):
    missing = tmp_path / "outputs" / "no_such_run"
    err = one_line_error(
        capsys,
        compare_argv(
            project,
            tmp_path / "out",
            "--student-model",
            str(project["student"]),
            "--students",
            str(missing),
        ),
    )
    assert err.startswith(f"--students {missing}: no such folder"), err


def test_a_model_without_a_trained_head_is_refused(project, tmp_path, capsys, tiny_models):
    bare = tiny_models["bert_student"]  # an encoder checkpoint: no classes at all
    err = one_line_error(
        capsys, compare_argv(project, tmp_path / "out", "--student-model", str(bare))
    )
    assert err.startswith(f"--student-model {bare}: its classes are unnamed"), err


def gain_models():
    """A teacher, students trained several ways, and a baseline, as model records with the
    run configs and histories compare reads; plus each model's predictions on 200 rows. The
    baseline: 96 labelled rows, batch 8, 3 epochs = 36 optimizer steps, 288 rows seen."""
    import numpy as np

    def run(alpha, epochs=3, steps=36, seen=96, **changes):
        data = {
            "source": "data/toy",
            "train_rows": 96,
            "unlabeled_rows": 0,
            **changes.pop("data", {}),
        }
        resolved = {
            "effective_batch_size": 8,
            "total_optimizer_steps": steps,
            **changes.pop("resolved", {}),
        }
        config = {
            "student_model": "bert-tiny",
            "student_layers": None,
            "student_num_layers": None,
            "student_tokenizer": None,
            "alpha": alpha,
            "temperature": 3.0,
            "epochs": epochs,
            "max_length": 128,
            "learning_rate": 3e-4,
            "lr_scheduler": "constant_with_warmup",
            "warmup_ratio": 0.1,
            "weight_decay": 0.01,
            "seed": 42,
            "data": data,
            "resolved": resolved,
            **changes,
        }
        history = {"epochs": [{"epoch": e + 1, "train_samples": seen} for e in range(epochs)]}
        return config, history

    def model(name, role, made=(None, None), params=100, cls="BertForSequenceClassification"):
        return {
            "name": name,
            "role": role,
            "run_config": made[0],
            "history": made[1],
            "parameters": params,
            "model_class": cls,
        }

    unlabeled = {"train_rows": 96, "unlabeled_rows": 864}
    models = [
        model("teacher", "teacher"),
        model("kd", "student", run(0.7)),
        model("kd-same", "student", run(0.7)),
        # The baseline trained longer than this student: a stronger baseline, still fair.
        model("kd-shorter", "student", run(0.7, epochs=1, steps=12)),
        # Step-matched: 3 epochs over 960 rows of text against the baseline's 30 over its 96.
        model("kd-matched", "student", run(0.7, data=unlabeled, steps=360, seen=960)),
        model("kd-cut", "student", run(0.7, student_layers="0,5")),
        # The old demo: as many epochs, over ten times the rows, so ten times the steps.
        model("kd-unlabelled", "student", run(0.7, data=unlabeled, steps=360, seen=960)),
        model("kd-more-rows", "student", run(0.7, data={"train_rows": 960})),
        model("kd-other-length", "student", run(0.7, max_length=64)),
        model("kd-other-lr", "student", run(0.7, learning_rate=1e-3)),
        model("kd-other-batch", "student", run(0.7, resolved={"effective_batch_size": 32})),
        model("kd-other-schedule", "student", run(0.7, lr_scheduler="linear")),
        model("kd-other-tokenizer", "student", run(0.7, student_tokenizer="minilm")),
        model("folder", "student"),
        model("ce", "baseline", run(0.0)),
    ]
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 200)

    def right(share):  # predictions right on about `share` of the rows
        return np.where(rng.random(200) < share, y, (y + 1) % 4)

    preds = {m["name"]: right(0.8) for m in models}
    preds["kd"] = right(0.95)  # clearly better than the baseline
    preds["kd-same"] = preds["ce"].copy()  # exactly the baseline: a gain of 0, within noise
    preds["kd-shorter"] = preds["ce"].copy()
    return models, preds, y


def scored_gain(models, preds, y, resamples=1000):
    import torch as t

    from kdistill.evaluation.gain import add_intervals, distillation_gain

    for m in models:
        p = preds[m["name"]]
        m["accuracy"] = float((p == y).mean())
        m["macro_f1"] = m["accuracy"]  # not what is tested here
    boot = add_intervals(
        models, {n: t.tensor(p) for n, p in preds.items()}, t.tensor(y), 4, resamples, 0
    )
    return distillation_gain(models, boot), boot


def test_gain_only_against_a_fair_cross_entropy_baseline():
    from kdistill.evaluation.gain import distillation_gain

    models, preds, y = gain_models()
    ce = models[-1]
    # The step-matched student's baseline: 30 epochs over the 96 labelled rows.
    matched = next(m for m in models if m["name"] == "kd-matched")
    gain, boot = scored_gain(models, preds, y)
    for m in models:
        assert m["accuracy_ci"][0] <= m["accuracy"] <= m["accuracy_ci"][1]
    assert gain["baseline"] == "ce" and gain["baseline_valid"] and gain["baseline_problems"] == []
    kd, same, shorter = gain["students"]
    assert (kd["student"], same["student"], shorter["student"]) == ("kd", "kd-same", "kd-shorter")
    assert shorter["accuracy_points"] == 0
    kd_model = next(m for m in models if m["name"] == "kd")
    assert kd["accuracy_points"] == pytest.approx((kd_model["accuracy"] - ce["accuracy"]) * 100)
    low, high = kd["accuracy_points_ci"]
    assert 0 < low < kd["accuracy_points"] < high and not kd["accuracy_within_noise"]
    assert same["accuracy_points"] == 0 and same["accuracy_points_ci"] == [0.0, 0.0]
    assert same["accuracy_within_noise"] and same["macro_f1_within_noise"]
    # What was matched is named, with its value; and nothing differs.
    assert kd["differs"] == []
    for what in ("optimizer steps 36", "rows seen 288", "epochs 3", "learning rate 0.0003"):
        assert what in kd["matched"]
    for what in ("batch size 8", "schedule constant_with_warmup", "seed 42"):
        assert what in kd["matched"]
    assert kd["budget"]["student"] == {"optimizer_steps": 36, "rows_seen": 288, "epochs": 3}
    # A longer baseline is fair, and says how much longer.
    assert shorter["differs"] == [
        "optimizer steps 12 vs the baseline's 36 (+200.0%)",
        "rows seen 96 vs the baseline's 288",
        "epochs 1 vs the baseline's 3",
    ]
    # Anything else the student did differently would be folded into the "gain": none given.
    why = {n["student"]: n["differences"] for n in gain["not_comparable"]}
    assert list(why) == [m["name"] for m in models[4:-1]]
    fewer_steps = (
        "optimizer steps 360 vs the baseline's 36 (a fair baseline trains for at least as "
        "many: give it more --epochs)"
    )
    assert why["kd-matched"] == [fewer_steps]  # against this 3-epoch baseline
    assert why["kd-unlabelled"] == [fewer_steps]
    assert why["kd-cut"] == ["student_layers 0,5 vs the baseline's None"]
    assert why["kd-more-rows"] == ["labelled rows 960 vs the baseline's 96"]
    assert why["kd-other-length"] == ["max length 64 vs the baseline's 128"]
    assert why["kd-other-lr"] == ["learning rate 0.001 vs the baseline's 0.0003"]
    assert why["kd-other-batch"] == ["batch size 32 vs the baseline's 8"]
    assert why["kd-other-schedule"] == ["schedule linear vs the baseline's constant_with_warmup"]
    assert why["kd-other-tokenizer"] == ["tokenizer minilm vs the baseline's None"]
    assert "no distill config.json" in why["folder"][0]
    assert distillation_gain(models[:-1], boot) is None

    # Given 30 epochs (360 steps, 2,880 rows seen), the baseline is a fair one for kd-matched,
    # and no longer for the students it now outtrains by ten times: still fair, but named.
    ce["run_config"]["epochs"], ce["run_config"]["resolved"]["total_optimizer_steps"] = 30, 360
    ce["history"]["epochs"] = [{"epoch": e + 1, "train_samples": 96} for e in range(30)]
    gain, _ = scored_gain([models[0], matched, ce], preds, y)
    (g,) = gain["students"]
    assert g["student"] == "kd-matched"
    assert "optimizer steps 360" in g["matched"] and "rows seen 2880" in g["matched"]
    assert g["differs"] == ["epochs 3 vs the baseline's 30"]


def test_a_different_seed_is_named_beside_the_gain():
    models, preds, y = gain_models()
    models[1]["run_config"]["seed"] = 7
    gain, _ = scored_gain(models[:2] + models[-1:], preds, y, resamples=200)
    (g,) = gain["students"]
    assert g["differs"] == [
        "seed 7 vs the baseline's 42 (the interval covers the test rows, not the seeds' spread)"
    ]


def test_each_runs_recipe_names_what_made_it():
    """Two students whose run names differ only by a timestamp are told apart by recipe."""
    from kdistill.evaluation.gain import run_recipe

    models, _, _ = gain_models()
    config = models[4]["run_config"]  # kd-matched
    assert run_recipe(config) == (
        "all layers; KD alpha 0.7 T 3.0; 96 labelled + 864 unlabelled rows; 3 epochs; 360 steps"
    )
    hidden = {
        **config,
        "student_layers": "0,5",
        "resolved": {
            **config["resolved"],
            "intermediate": {"hidden_loss": "mse", "hidden_weight": 1.0, "attention_loss": "none"},
        },
    }
    assert run_recipe(hidden) == (
        "layers 0,5; KD alpha 0.7 T 3.0 + hidden mse x1.0; 96 labelled + 864 unlabelled rows; "
        "3 epochs; 360 steps"
    )
    assert run_recipe(models[-1]["run_config"]).startswith("all layers; CE only; 96 labelled rows")
    assert run_recipe(None) is None


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"alpha": 0.7}, "alpha 0.7, not 0"),
        (
            {"data": {"source": "data/toy", "train_rows": 96, "unlabeled_rows": 500}},
            "500 unlabelled rows",
        ),
        (None, "no distill config.json"),
    ],
)
def test_a_baseline_that_saw_the_teacher_gives_no_gain(tmp_path, change, problem):
    """A "baseline" trained with the teacher (alpha > 0, or unlabelled rows given T^2 * KL as
    alpha 0 did before) measures nothing: every student is listed with the reason, in the JSON,
    the terminal table and the HTML report."""
    import torch as t

    from kdistill.compare import format_summary
    from kdistill.evaluation.gain import add_intervals, distillation_gain
    from kdistill.evaluation.html_report import write_html_report

    models, preds, y = gain_models()
    ce = models[-1]
    ce["run_config"] = None if change is None else {**ce["run_config"], **change}
    students = len(models) - 2
    for m in models:
        m.update(
            accuracy=float((preds[m["name"]] == y).mean()),
            macro_f1=0.5,
            agreement_with_teacher=0.9,
            kl_to_teacher=0.1,
            latency_ms_batch_1=1.0,
            speedup_vs_teacher=1.0,
            throughput_per_s=10.0,
            size_on_disk_bytes=1000,
        )
    boot = add_intervals(models, {n: t.tensor(p) for n, p in preds.items()}, t.tensor(y), 4, 200, 0)
    gain = distillation_gain(models, boot)
    assert not gain["baseline_valid"] and problem in gain["baseline_problems"][0]
    assert gain["students"] == []
    assert len(gain["not_comparable"]) == students
    assert all(problem in n["differences"][0] for n in gain["not_comparable"])
    results = {
        "models": models,
        "distillation_gain": gain,
        "speed_settings": {"throughput_batch_size": 8},
        "dataset": {"name": "toy", "split": "test", "rows": 200, "label_names": CLASSES},
    }
    table = format_summary(results)
    assert "distillation gain of" not in table
    assert "no distillation gain for kd: not a fair comparison with the baseline ce" in table
    assert problem in table
    write_html_report(results, tmp_path / "report.html", {})
    page = (tmp_path / "report.html").read_text()
    assert "no gain reported" in page and problem in page
