"""The distill run on tiny real models: the seed's output layout, what the files say, that only
the student learns, and that the recorded numbers are the saved model's."""

import importlib
import json
import re
from pathlib import Path

import pytest
import torch
from conftest import CLASSES

from kdistill.cli import main

RUN_DIR = re.compile(r"^toy_T3\.0_A0\.7_\d{8}_\d{6}(_\d+)?$")


def seed_quick_test(teacher: Path, student: Path, *extra: str) -> list[str]:
    """The seed's "Quick Testing" command with local models for the Hub ids. The tiny random
    teachers sit at chance, so mechanics tests pass --allow-weak-teacher (the guard has its
    own tests)."""
    weak = [] if "--no-allow-weak-teacher" in extra else ["--allow-weak-teacher"]
    return [
        "--dataset",
        "toy",
        "--teacher-model",
        str(teacher),
        "--student-model",
        str(student),
        "--max-train-samples",
        "100",
        "--max-val-samples",
        "100",
        "--batch-size",
        "2",
        "--max-length",
        "128",
        "--epochs",
        "2",
        "--mixed-precision",
        "no",
        *weak,
        *extra,
    ]


def run_distill(argv: list[str]) -> Path:
    assert main(argv, prog="train_soft_distillation.py", command="distill") == 0
    runs = sorted(Path("outputs/student_soft_distill").iterdir())
    return runs[-1]


def test_seed_quick_test_writes_the_seed_layout(workdir, tiny_models):
    run = run_distill(seed_quick_test(tiny_models["bert_teacher"], tiny_models["bert_student"]))
    assert RUN_DIR.match(run.name), run.name
    assert not list(run.parent.glob("*.partial"))
    for name in ("best_model", "final_model"):
        folder = run / name
        assert (folder / "model.safetensors").is_file() and (folder / "config.json").is_file()
        assert (folder / "tokenizer.json").is_file()  # a self-contained classifier
    history = json.loads((run / "history.json").read_text())
    assert [e["epoch"] for e in history["epochs"]] == [1, 2]
    for record in history["epochs"]:
        for key in (
            "train_loss",
            "train_kl",
            "train_ce",
            "val_loss",
            "val_accuracy",
            "val_macro_f1",
            "learning_rate",
            "samples_per_second",
        ):
            assert isinstance(record[key], float), key
        # loss = alpha * KL + (1 - alpha) * CE, averaged over the same rows
        assert record["train_loss"] == pytest.approx(
            0.7 * record["train_kl"] + 0.3 * record["train_ce"], rel=1e-4
        )
        assert record["train_samples"] == 96  # 100 stratified over 4 classes of 24 rows in train
    assert 0.0 <= history["teacher"]["val_accuracy"] <= 1.0
    assert history["best"]["val_accuracy"] == max(e["val_accuracy"] for e in history["epochs"])
    config = json.loads((run / "config.json").read_text())
    assert (config["temperature"], config["alpha"], config["epochs"]) == (3.0, 0.7, 2)
    assert config["data"]["label_names"] == CLASSES
    assert config["data"]["train_rows"] == 96 and config["data"]["validation_rows"] == 24
    # The teacher's head is reversed.
    assert config["teacher"]["settings"]["label_columns"] == [3, 2, 1, 0]
    assert config["resolved"]["mixed_precision"] == "no"


def test_saved_student_is_a_plain_classifier_whose_accuracy_matches_history(workdir, tiny_models):
    from datasets import load_dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    run = run_distill(
        seed_quick_test(
            tiny_models["bert_teacher"],
            tiny_models["bert_student"],
            "--learning-rate",
            "3e-3",
            "--epochs",
            "3",
        )
    )
    history = json.loads((run / "history.json").read_text())
    model = AutoModelForSequenceClassification.from_pretrained(run / "best_model").eval()
    tok = AutoTokenizer.from_pretrained(run / "best_model")
    assert model.config.id2label == dict(enumerate(CLASSES))
    val = load_dataset("parquet", data_files=str(workdir / "data/toy/validation.parquet"))["train"]
    with torch.no_grad():
        enc = tok(
            list(val["text"]), padding=True, truncation=True, max_length=128, return_tensors="pt"
        )
        preds = model(**enc).logits.argmax(-1)
    labels = torch.tensor([CLASSES.index(name) for name in val["label"]])  # stored as names
    accuracy = (preds == labels).float().mean().item()
    # The number in history.json is the saved model's, measured in eval mode (no dropout).
    assert accuracy == pytest.approx(history["best"]["val_accuracy"], abs=1e-6)
    assert accuracy > 0.5  # the words give the classes away; chance is 0.25


@pytest.mark.parametrize("cache", ["off", "memory"])
def test_only_the_student_learns(workdir, tiny_models, monkeypatch, cache):
    """The teacher is frozen: its weights end bit-identical, and no grad reaches it."""
    distill_module = importlib.import_module("kdistill.distill")
    from kdistill.teachers import classifier as models_module

    captured = {}
    load_teacher = models_module.load_teacher_classifier
    train_one_epoch = distill_module.train_one_epoch

    def load_spy(*args, **kwargs):
        model, tok, columns = load_teacher(*args, **kwargs)
        captured["teacher"] = model
        captured["before"] = {k: v.clone() for k, v in model.state_dict().items()}
        return model, tok, columns

    def train_spy(student, *args, **kwargs):
        if "student_before" not in captured:
            captured["student_before"] = {
                k: v.detach().clone() for k, v in student.state_dict().items()
            }
        out = train_one_epoch(student, *args, **kwargs)
        captured["student_after"] = {k: v.detach().clone() for k, v in student.state_dict().items()}
        return out

    monkeypatch.setattr(models_module, "load_teacher_classifier", load_spy)
    monkeypatch.setattr(distill_module, "train_one_epoch", train_spy)
    run_distill(
        seed_quick_test(
            tiny_models["bert_teacher"], tiny_models["bert_student"], "--teacher-cache", cache
        )
    )
    teacher = captured["teacher"]
    assert not teacher.training
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    after = teacher.state_dict()
    if cache == "memory":  # freed once every epoch's logits were cached: nothing left to change
        assert all(v.is_meta for v in after.values())
    else:
        assert all(torch.equal(captured["before"][k], after[k]) for k in after)
    changed = [
        k
        for k, v in captured["student_after"].items()
        if not torch.equal(v, captured["student_before"][k])
    ]
    assert len(changed) > len(captured["student_after"]) // 2


def test_qwen_teacher_teaches_a_bert_student_and_vice_versa(workdir, tiny_models):
    """Different tokenizers for the same text; a decoder-only model without a pad token."""
    run = run_distill(
        seed_quick_test(tiny_models["qwen_teacher"], tiny_models["bert_student"], "--epochs", "1")
    )
    assert (run / "best_model" / "model.safetensors").is_file()
    run = run_distill(
        seed_quick_test(
            tiny_models["bert_teacher"],
            tiny_models["qwen_lm"],
            "--epochs",
            "1",
            "--batch-size",
            "4",
        )
    )
    config = json.loads((run / "best_model" / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForSequenceClassification"]
    assert config["pad_token_id"] is not None  # batches > 1 pool the last real token


def test_two_runs_never_overwrite_each_other(workdir, tiny_models):
    argv = seed_quick_test(
        tiny_models["bert_teacher"], tiny_models["bert_student"], "--epochs", "1"
    )
    first = run_distill(argv)
    second = run_distill(argv)
    assert first != second and first.is_dir() and second.is_dir()


def test_alpha_zero_is_plain_supervised_training(workdir, tiny_models):
    run = run_distill(
        seed_quick_test(
            tiny_models["bert_teacher"],
            tiny_models["bert_student"],
            "--alpha",
            "0",
            "--epochs",
            "1",
        )
    )
    history = json.loads((run / "history.json").read_text())
    record = history["epochs"][0]
    assert record["train_loss"] == pytest.approx(record["train_ce"], rel=1e-6)
    # No teacher on any row: it is never run, so there is no KL to measure.
    assert record["train_kl"] == 0.0 and history["teacher"]["used"] is False


def test_alpha_one_learns_the_task_from_the_teacher_alone(workdir, tiny_models, trained_teacher):
    """alpha = 1: the labels carry no weight, so all the student knows comes from the teacher."""
    teacher_eval = json.loads((trained_teacher / "teacher_eval.json").read_text())
    run = run_distill(
        seed_quick_test(
            trained_teacher,
            tiny_models["bert_student"],
            "--alpha",
            "1",
            "--epochs",
            "15",
            "--batch-size",
            "8",
            "--learning-rate",
            "3e-3",
        )
    )
    history = json.loads((run / "history.json").read_text())
    epochs = history["epochs"]
    assert epochs[-1]["train_loss"] == pytest.approx(epochs[-1]["train_kl"], rel=1e-6)
    assert epochs[-1]["train_kl"] < 0.5 * epochs[0]["train_kl"]
    assert history["teacher"]["val_accuracy"] >= 0.9
    assert teacher_eval["val_accuracy"] >= 0.9
    assert history["best"]["val_accuracy"] >= 0.6  # chance is 0.25; 24 validation rows


def test_untrained_teacher_runs_when_allowed_and_the_run_says_so(workdir, tiny_models, caplog):
    run = run_distill(
        seed_quick_test(
            tiny_models["qwen_lm"],
            tiny_models["bert_student"],
            "--epochs",
            "1",
            "--allow-untrained-teacher",
            "--teacher-mode",
            "classifier",
        )
    )
    assert "untrained" in caplog.text
    assert json.loads((run / "config.json").read_text())["allow_untrained_teacher"] is True


def test_config_only_student_starts_from_random_weights(workdir, tiny_models, tmp_path):
    from transformers import BertConfig

    arch = tmp_path / "arch"
    BertConfig(
        vocab_size=200,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
    ).save_pretrained(arch)
    tokenizer = str(tiny_models["bert_student"])
    run = run_distill(
        seed_quick_test(
            tiny_models["bert_teacher"], arch, "--epochs", "1", "--student-tokenizer", tokenizer
        )
    )
    config = json.loads((run / "final_model" / "config.json").read_text())
    assert config["hidden_size"] == 16 and config["id2label"]["0"] == "Animal"


def test_a_failed_run_leaves_a_partial_folder_with_its_config(workdir, tiny_models, monkeypatch):
    distill_module = importlib.import_module("kdistill.distill")

    def boom(*args, **kwargs):
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(distill_module, "train_one_epoch", boom)
    with pytest.raises(RuntimeError):
        main(
            seed_quick_test(tiny_models["bert_teacher"], tiny_models["bert_student"]),
            command="distill",
        )
    (partial,) = Path("outputs/student_soft_distill").glob("*.partial")
    assert json.loads((partial / "config.json").read_text())["alpha"] == 0.7
    assert not (partial / "best_model").exists()


def test_runs_with_different_precision_in_one_process(workdir, tiny_models):
    """A sweep or a notebook calls distill repeatedly; Accelerate's global state must not leak."""
    for precision in ("bf16", "no"):
        argv = seed_quick_test(tiny_models["bert_teacher"], tiny_models["bert_student"])
        run = run_distill([*argv, "--epochs", "1", "--mixed-precision", precision])
        config = json.loads((run / "config.json").read_text())
        assert config["resolved"]["mixed_precision"] == precision


def test_gradient_checkpointing_auto_follows_the_student_size(tiny_models, monkeypatch):
    loop = importlib.import_module("kdistill.training.loop")
    from kdistill.students.load import load_student

    model, _ = load_student(str(tiny_models["bert_student"]), CLASSES, seed=0)
    assert loop.apply_gradient_checkpointing(model, "auto") is False
    assert not model.is_activation_checkpointing
    assert loop.apply_gradient_checkpointing(model, "off") is False
    monkeypatch.setattr(loop, "CHECKPOINTING_MIN_PARAMS", 1000)
    assert loop.apply_gradient_checkpointing(model, "auto") is True
    assert model.is_activation_checkpointing
    fresh, _ = load_student(str(tiny_models["qwen_lm"]), CLASSES, seed=0)
    assert loop.apply_gradient_checkpointing(fresh, "on") is True
    assert fresh.is_activation_checkpointing and fresh.config.use_cache is False


def test_optimizer_is_fused_and_spares_biases_and_norms(tiny_models):
    from kdistill.students.load import load_student
    from kdistill.training.loop import make_optimizer

    model, _ = load_student(str(tiny_models["bert_student"]), CLASSES, seed=0)
    opt = make_optimizer(model, 1e-3, 0.01)
    assert opt.defaults["fused"] is True  # the per-tensor loop is twice as slow on CPU
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in decay["params"])
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(
        "LayerNorm" in names[id(p)] or names[id(p)].endswith("bias") for p in no_decay["params"]
    )
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_head_learning_rate_scale_speeds_up_only_the_new_head(tiny_models):
    """--head-learning-rate-scale: the parameters outside the base model (the classifier) get
    lr * scale, in their own decay and no-decay groups; the body keeps lr."""
    from kdistill.students.load import load_student
    from kdistill.training.loop import make_optimizer

    model, _ = load_student(str(tiny_models["bert_student"]), CLASSES, seed=0)
    opt = make_optimizer(model, 1e-3, 0.01, head_lr_scale=10.0)
    names = {id(p): n for n, p in model.named_parameters()}
    lrs = {names[id(p)]: g["lr"] for g in opt.param_groups for p in g["params"]}
    assert lrs["classifier.weight"] == lrs["classifier.bias"] == pytest.approx(1e-2)
    assert {lr for n, lr in lrs.items() if not n.startswith("classifier.")} == {1e-3}
    assert len(lrs) == len(list(model.parameters()))
    assert opt.param_groups[0]["lr"] == 1e-3  # the body's lr is the one logged


def test_student_cut_to_fewer_layers_trains_and_saves_the_reduced_config(
    workdir, tiny_models, trained_teacher
):
    """--student-layers keeps only those blocks of a pretrained student; the saved student is a
    normal checkpoint with the reduced config."""
    from transformers import AutoModelForSequenceClassification

    run = run_distill(
        seed_quick_test(
            trained_teacher, tiny_models["bert_teacher"], "--epochs", "1", "--student-layers", "1"
        )
    )
    config = json.loads((run / "config.json").read_text())
    assert config["student_layers"] == "1"
    model, info = AutoModelForSequenceClassification.from_pretrained(
        run / "best_model", output_loading_info=True
    )
    assert model.config.num_hidden_layers == 1 and len(model.bert.encoder.layer) == 1
    assert not info["missing_keys"] and not info["unexpected_keys"]
    # The kept block is the original's layer 1, trained from there.
    full = AutoModelForSequenceClassification.from_pretrained(tiny_models["bert_teacher"])
    assert config["student"]["parameters"] < sum(p.numel() for p in full.parameters())


def test_student_layer_flags_are_checked(workdir, tiny_models, capsys):
    argv = seed_quick_test(
        tiny_models["bert_teacher"], tiny_models["bert_student"], "--student-layers", "0,7"
    )
    assert main(argv, prog="train_soft_distillation.py", command="distill") == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--student-layers" in err and "2 layers" in err
    argv = seed_quick_test(
        tiny_models["bert_teacher"],
        tiny_models["bert_student"],
        "--student-layers",
        "0",
        "--student-num-layers",
        "1",
    )
    assert main(argv, prog="train_soft_distillation.py", command="distill") == 2
    assert "not both" in capsys.readouterr().err


def test_nan_loss_stops_with_one_line_and_the_run_shows_as_crashed(
    workdir, tiny_models, monkeypatch, capsys
):
    kd = importlib.import_module("kdistill.training.loop")  # where the step calls the loss
    from kdistill.training.runs import list_runs

    real = kd.kd_loss

    def nan_on_third_step(*args, **kwargs):
        out = real(*args, **kwargs)
        nan_on_third_step.calls += 1
        return out._replace(loss=out.loss * float("nan")) if nan_on_third_step.calls == 3 else out

    nan_on_third_step.calls = 0
    monkeypatch.setattr(kd, "kd_loss", nan_on_third_step)
    argv = seed_quick_test(tiny_models["bert_teacher"], tiny_models["bert_student"])
    assert main(argv, prog="train_soft_distillation.py", command="distill") == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("train_soft_distillation.py: error:"), last
    assert "the loss became nan at step 2" in last and "--learning-rate" in last
    (partial,) = Path("outputs/student_soft_distill").iterdir()
    assert partial.name.endswith(".partial")  # never renamed to look complete
    history = json.loads((partial / "history.json").read_text())
    assert "loss became nan" in history["failed"]
    assert not (partial / "final_model").exists()
    # this process is alive, yet the run is over: listed as crashed, not running
    (row,) = list_runs(Path("outputs"))
    assert row["status"] == "crashed"


def test_lr_scheduler_picks_transformers_schedule_after_the_warm_up():
    """--lr-scheduler takes Trainer's names; each schedule warms up over --warmup-ratio of the
    optimiser steps, then follows its own shape."""
    from kdistill.config import DistillConfig

    loop = importlib.import_module("kdistill.training.loop")

    def lrs(name: str) -> list[float]:
        param = torch.nn.Parameter(torch.zeros(1))
        optimizer = torch.optim.SGD([param], lr=1.0)
        config = DistillConfig(lr_scheduler=name, epochs=2, warmup_ratio=0.1)
        scheduler, total = loop.make_scheduler(optimizer, 10, config)  # 10 batches an epoch
        assert total == 20
        out = []
        for _ in range(total):
            out.append(scheduler.get_last_lr()[0])
            optimizer.step()
            scheduler.step()
        return out

    linear, constant = lrs("linear"), lrs("constant")
    warm, cosine = lrs("constant_with_warmup"), lrs("cosine")
    assert linear[:3] == pytest.approx([0.0, 0.5, 1.0]) and linear[-1] == pytest.approx(1 / 18)
    assert constant == [1.0] * 20  # no warm-up either
    assert warm[:2] == pytest.approx([0.0, 0.5]) and warm[2:] == [1.0] * 18
    assert cosine[2] == pytest.approx(1.0) and cosine[11] == pytest.approx(0.5)  # half-way
    assert 0.0 < cosine[-1] < 0.01


def test_a_constant_schedule_keeps_the_peak_learning_rate_in_history(workdir, tiny_models):
    run = run_distill(
        seed_quick_test(
            tiny_models["bert_teacher"],
            tiny_models["bert_student"],
            "--lr-scheduler",
            "constant",
            "--learning-rate",
            "2e-4",
        )
    )
    history = json.loads((run / "history.json").read_text())
    assert [e["learning_rate"] for e in history["epochs"]] == [2e-4, 2e-4]
    assert json.loads((run / "config.json").read_text())["lr_scheduler"] == "constant"


def test_the_default_schedule_keeps_the_peak_learning_rate_in_history(workdir, tiny_models):
    """distill's default holds the peak after the warm-up (no decay to 0: short runs lost 10
    points to it); finetune-teacher keeps linear decay."""
    from kdistill.config import FinetuneConfig

    run = run_distill(
        seed_quick_test(
            tiny_models["bert_teacher"], tiny_models["bert_student"], "--learning-rate", "2e-4"
        )
    )
    history = json.loads((run / "history.json").read_text())
    # one step an epoch here: the first is the warm-up; linear would end at 0
    assert [e["learning_rate"] for e in history["epochs"]] == [0.0, 2e-4]
    assert json.loads((run / "config.json").read_text())["lr_scheduler"] == "constant_with_warmup"
    assert FinetuneConfig().lr_scheduler == "linear"


def test_fit_temperature_recovers_the_scale_an_overconfident_model_added():
    """Labels drawn from softmax(z): a model that outputs 4 * z is overconfident by exactly
    T = 4, and temperature scaling finds it; a rescale changes no prediction."""
    from kdistill.evaluation.metrics import calibration_report, fit_temperature

    gen = torch.Generator().manual_seed(0)
    z = torch.randn(20000, 5, generator=gen) * 2
    labels = torch.multinomial(torch.softmax(z, -1), 1, generator=gen).squeeze(1)
    assert fit_temperature(4 * z, labels) == pytest.approx(4.0, rel=0.05)
    assert fit_temperature(z / 3, labels) == pytest.approx(1 / 3, rel=0.05)
    report = calibration_report(4 * z, labels)
    assert report["nll_calibrated"] < report["nll"] and report["ece_calibrated"] < report["ece"]


def test_finetune_teacher_reports_its_calibration(trained_teacher):
    """finetune-teacher says how sure its teacher is: ECE and NLL at T=1, the temperature
    fitted on validation, and the NLL that temperature reaches (never worse than T=1's)."""
    calibration = json.loads((trained_teacher / "teacher_eval.json").read_text())["calibration"]
    keys = {"ece", "nll", "fitted_temperature", "ece_calibrated", "nll_calibrated"}
    assert set(calibration) == keys
    assert calibration["fitted_temperature"] > 0
    assert 0.0 <= calibration["ece"] <= 1.0 and 0.0 <= calibration["ece_calibrated"] <= 1.0
    assert calibration["nll_calibrated"] <= calibration["nll"] + 1e-6
