"""Calibration that cannot run away (a bounded temperature fit, degenerate fits said and
recorded, T_cal reaching every path to the soft targets) and calibrated models on disk (a fitted
T folded into the head: the same argmax, probabilities softmax(logits / T))."""

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from test_distill import run_distill, seed_quick_test

from kdistill.errors import KdistillError


def _random_labels(n: int = 2000, classes: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, classes, generator=g) * 3, torch.randint(0, classes, (n,), generator=g)


def test_random_labels_stop_at_the_upper_bound_not_at_millions():
    """Logits with no signal want T -> infinity; an unbounded fit returned 3e6 (uniform targets,
    silently). The bounded fit stops at 20 and says it hit the bound."""
    from kdistill.evaluation.metrics import fit_temperature
    from kdistill.training.temperature import teacher_temperatures

    z, y = _random_labels()
    assert fit_temperature(z, y) == pytest.approx(20.0, rel=1e-3)
    fit, t = teacher_temperatures("auto", 3.0, z, y)
    assert t == 3.0 and fit.temperature == pytest.approx(20.0, rel=1e-3)
    assert fit.bound_hit == "upper" and "upper bound" in fit.degenerate
    assert fit.nll_fitted < fit.nll_at_1  # still the best T in range


def test_a_fit_that_gains_nothing_keeps_t_1_and_one_that_is_sure_stops_at_the_lower_bound():
    from kdistill.evaluation.calibration import fit_temperature

    g = torch.Generator().manual_seed(1)
    z = torch.randn(4000, 5, generator=g) * 2
    y = torch.multinomial(torch.softmax(z, -1), 1, generator=g).squeeze(1)
    calibrated = fit_temperature(z, y)  # labels drawn from softmax(z): T = 1 is right
    assert calibrated.temperature == 1.0 and calibrated.bound_hit is None
    assert "no better than T = 1" in calibrated.degenerate
    assert calibrated.nll_fitted == calibrated.nll_at_1
    # Every row right by a wide margin: the NLL falls as T -> 0, and the fit stops at 0.05.
    sure = torch.nn.functional.one_hot(y, 5).float() * 3
    fit = fit_temperature(sure, y)
    assert fit.temperature == pytest.approx(0.05, rel=1e-3) and fit.bound_hit == "lower"
    # A real overconfidence is undone, inside the bounds, with nothing to warn about.
    fit = fit_temperature(z * 4, y)
    assert fit.temperature == pytest.approx(4.0, rel=0.1) and fit.degenerate is None
    assert fit.ece_fitted < fit.ece_at_1
    record = fit.record()
    assert record["bounds"] == [0.05, 20.0] and record["degenerate"] is None


# ------------------------------------------------------------------ T_cal reaches the targets


def _capture_teacher_logits(monkeypatch) -> list[torch.Tensor]:
    """Every teacher-logit tensor a loss receives, in the plain step and the intermediate one."""
    import kdistill.training.intermediate as intermediate
    import kdistill.training.loop as loop

    seen: list[torch.Tensor] = []

    def recording(original):
        def wrapped(student_logits, teacher_logits, *args, **kwargs):
            seen.append(teacher_logits.detach().clone())
            return original(student_logits, teacher_logits, *args, **kwargs)

        return wrapped

    monkeypatch.setattr(loop, "kd_loss", recording(loop.kd_loss))
    monkeypatch.setattr(intermediate, "distill_loss", recording(intermediate.distill_loss))
    return seen


@pytest.mark.parametrize(
    "extra",
    [
        ("--hidden-loss", "mse", "--teacher-cache", "off"),  # intermediate, online teacher
        ("--attention-loss", "relation", "--teacher-cache", "off"),
        ("--teacher-cache", "off"),  # the seed's loop, online teacher
        ("--teacher-cache", "memory"),  # the logit cache
    ],
    ids=["hidden-online", "relation-online", "online", "cached"],
)
def test_the_fitted_t_cal_reaches_the_training_targets(
    workdir, tiny_models, trained_teacher, monkeypatch, extra
):
    """The same run with --teacher-calibration off and auto: every batch's teacher logits in
    the loss differ by exactly the T_cal recorded in config.json, on every path to the loss."""
    # The relation loss needs one tokenizer: the teacher's own.
    student = trained_teacher if "relation" in extra else tiny_models["bert_student"]
    argv = [*seed_quick_test(trained_teacher, student, "--epochs", "1", *extra)]
    argv += ["--max-train-samples", "16", "--calibrate-student", "off"]
    seen = _capture_teacher_logits(monkeypatch)
    run_distill([*argv, "--teacher-calibration", "off"])
    plain = list(seen)
    seen.clear()
    run = run_distill([*argv, "--teacher-calibration", "auto"])
    calibrated = list(seen)
    resolved = json.loads((run / "config.json").read_text())["resolved"]
    fit = resolved["teacher_calibration"]
    t_cal = resolved["teacher_calibration_temperature"]
    assert fit["temperature"] == t_cal and 0.05 <= t_cal <= 20.0
    assert fit["nll_fitted"] <= fit["nll_at_1"] and fit["rows"] == 24
    assert t_cal != 1.0  # a teacher trained for 6 epochs on 400 rows is not calibrated as is
    assert len(calibrated) == len(plain) > 0
    for raw, scaled in zip(plain, calibrated, strict=True):
        torch.testing.assert_close(scaled * t_cal, raw, rtol=1e-4, atol=1e-5)


def test_a_degenerate_teacher_fit_is_a_warning_and_recorded(workdir, tiny_models, caplog):
    """The tiny random teacher sits at chance: its best T is at the upper bound, said in one
    warning line and recorded, not a silent 3e6."""
    with caplog.at_level(logging.WARNING):
        run = run_distill(
            seed_quick_test(
                tiny_models["bert_teacher"],
                tiny_models["bert_student"],
                "--teacher-calibration",
                "auto",
                "--epochs",
                "1",
                "--calibrate-student",
                "off",
            )
        )
    fit = json.loads((run / "config.json").read_text())["resolved"]["teacher_calibration"]
    assert fit["temperature"] <= 20.0
    assert fit["degenerate"] is not None
    warnings = [r.getMessage() for r in caplog.records if "--teacher-calibration auto" in r.message]
    assert len(warnings) == 1 and fit["degenerate"] in warnings[0]


# -------------------------------------------------------------------- folding T into the head


def _logits(folder: Path, texts: list[str]) -> torch.Tensor:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model.config.pad_token_id = tok.pad_token_id
    with torch.no_grad():
        enc = tok(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
        return model(**enc).logits


@pytest.mark.parametrize("which", ["bert_teacher", "qwen_teacher"])  # classifier; score, no bias
def test_folding_divides_the_logits_by_t_exactly(tiny_models, tmp_path, which):
    from conftest import CLASSES, make_texts

    from kdistill.training.calibration import calibrate_model_folder, classification_head

    folder = tmp_path / which
    shutil.copytree(tiny_models[which], folder)
    rows = make_texts(8, seed=3)
    texts, labels = [t for t, _ in rows], [CLASSES.index(c) for _, c in rows]
    before = _logits(folder, texts)
    # A known overconfidence: scale the head by 5, so the fit has a T to find.
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(folder)
    name, head = classification_head(model)
    assert name == ("score" if which == "qwen_teacher" else "classifier")
    with torch.no_grad():
        head.weight.mul_(5)
        if head.bias is not None:
            head.bias.mul_(5)
    model.save_pretrained(folder)
    scaled = _logits(folder, texts)
    record = calibrate_model_folder(folder, texts, labels, 64, 4)
    after = _logits(folder, texts)
    assert record["applied"] and record["head"] == name
    t = record["temperature"]
    assert 0.05 <= t <= 20.0 and t != 1.0
    torch.testing.assert_close(after, scaled / t, rtol=1e-4, atol=1e-5)
    assert torch.equal(after.argmax(-1), before.argmax(-1))
    # The tokenizer and everything else in the folder stay.
    assert (folder / "tokenizer.json").is_file() or (folder / "vocab.txt").is_file()


def test_a_model_with_no_single_logit_layer_is_refused_in_one_line():
    from transformers import PretrainedConfig

    from kdistill.training.calibration import classification_head

    class TwoHeads(torch.nn.Module):
        base_model_prefix = "body"

        def __init__(self) -> None:
            super().__init__()
            self.config = PretrainedConfig(num_labels=4)
            self.body = torch.nn.Linear(8, 8)
            self.head_a, self.head_b = torch.nn.Linear(8, 4), torch.nn.Linear(8, 4)

    with pytest.raises(KdistillError, match="--calibrate-student off") as e:
        classification_head(TwoHeads())
    assert "\n" not in str(e.value) and "head_a, head_b" in str(e.value)


# --------------------------------------------------------------------------- distill end to end


def _validation(workdir: Path) -> tuple[list[str], torch.Tensor]:
    from conftest import CLASSES
    from datasets import load_dataset

    val = load_dataset("parquet", data_files=str(workdir / "data/toy/validation.parquet"))["train"]
    return list(val["text"]), torch.tensor([CLASSES.index(name) for name in val["label"]])


def test_distilled_models_ship_calibrated_with_the_same_predictions(
    workdir, tiny_models, trained_teacher, capsys
):
    """--calibrate-student auto (the default) against off, same seed: best_model/ and
    final_model/ each give logits / T of the uncalibrated model, T their own, recorded with the
    validation ECE before and after in config.json, the card and `runs`."""
    from kdistill.evaluation.calibration import expected_calibration_error

    argv = seed_quick_test(trained_teacher, tiny_models["bert_student"], "--epochs", "2")
    argv += ["--learning-rate", "3e-3"]
    off = run_distill([*argv, "--calibrate-student", "off"])
    auto = run_distill(argv)
    assert json.loads((off / "config.json").read_text())["calibration"] == {"mode": "off"}
    records = json.loads((auto / "config.json").read_text())["calibration"]
    assert records["mode"] == "auto"
    texts, labels = _validation(workdir)
    for which in ("best_model", "final_model"):
        record = records[which]
        raw, calibrated = _logits(off / which, texts), _logits(auto / which, texts)
        assert torch.equal(calibrated.argmax(-1), raw.argmax(-1))
        t = record["temperature"]
        assert record["applied"] and record["bounds"] == [0.05, 20.0]
        torch.testing.assert_close(calibrated, raw / t, rtol=1e-4, atol=1e-5)
        probs = calibrated.softmax(-1)
        assert record["ece_fitted"] == pytest.approx(
            expected_calibration_error(probs, labels), abs=1e-4
        )
        assert record["ece_at_1"] == pytest.approx(
            expected_calibration_error(raw.softmax(-1), labels), abs=1e-4
        )
        assert record["nll_fitted"] < record["nll_at_1"]
        card = (auto / which / "README.md").read_text()
        assert f"{t:.3g}" in card and "calibrat" in card.lower()
    # predict (and pipeline(), which reads the same folder) prints the calibrated probabilities.
    from test_predict import run_predict

    t = records["best_model"]["temperature"]
    expected = (_logits(off / "best_model", texts[:3]) / t).softmax(-1)
    (workdir / "rows.txt").write_text("\n".join(texts[:3]) + "\n")
    preds = run_predict(capsys, "--model", str(auto), "--input", str(workdir / "rows.txt"))
    names = json.loads((auto / "config.json").read_text())["data"]["label_names"]
    for p, probs in zip(preds, expected, strict=True):
        for name, value in p["probabilities"].items():
            assert value == pytest.approx(float(probs[names.index(name)]), abs=1e-5)


def test_calibrate_student_flag_is_checked(workdir, tiny_models, capsys):
    from kdistill.cli import main

    argv = seed_quick_test(tiny_models["bert_teacher"], tiny_models["bert_student"])
    with pytest.raises(SystemExit) as e:
        main([*argv, "--calibrate-student", "maybe"], command="distill")
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--calibrate-student" in err and "auto" in err


@pytest.fixture(scope="module")
def teacher_pair(tmp_path_factory, tiny_models) -> dict[str, Path]:
    """The same finetune-teacher run (same seed, data) with --calibrate-teacher off and auto."""
    from conftest import write_toy_csv

    from kdistill.config import FinetuneConfig
    from kdistill.finetune import finetune_teacher

    root = tmp_path_factory.mktemp("pair")
    data = write_toy_csv(root / "toy.csv", 40, seed=5)
    folders = {}
    for mode in ("off", "auto"):
        config = FinetuneConfig(
            model=str(tiny_models["bert_student"]),
            dataset=str(data),
            output_dir=str(root / mode),
            epochs=3,
            batch_size=8,
            learning_rate=3e-3,
            mixed_precision="no",
            seed=0,
            calibrate_teacher=mode,
        )
        folders[mode] = finetune_teacher(config)
    return folders


def test_finetune_teacher_ships_its_teacher_calibrated(teacher_pair):
    """--calibrate-teacher auto (the default) against off, same seed: the saved teacher's
    logits are the uncalibrated one's divided by the recorded T, and its card says so."""
    from conftest import CLASSES, make_texts

    texts = [t for t, _ in make_texts(6, seed=9)]
    raw, calibrated = _logits(teacher_pair["off"], texts), _logits(teacher_pair["auto"], texts)
    report = json.loads((teacher_pair["auto"] / "teacher_eval.json").read_text())
    record = report["head_calibration"]
    assert record["applied"] and record["head"] == "classifier" and record["temperature"] != 1.0
    torch.testing.assert_close(calibrated, raw / record["temperature"], rtol=1e-4, atol=1e-5)
    assert torch.equal(calibrated.argmax(-1), raw.argmax(-1))
    assert record["nll_fitted"] < record["nll_at_1"]
    off = json.loads((teacher_pair["off"] / "teacher_eval.json").read_text())
    assert off["head_calibration"] == {"mode": "off"}
    card = (teacher_pair["auto"] / "README.md").read_text()
    assert f"T {record['temperature']:.3g}" in card
    assert len(CLASSES) == calibrated.shape[-1]


@pytest.mark.parametrize("cache", ["memory", "off"])
def test_distill_teaches_a_calibrated_teachers_logits_as_trained(
    workdir, tiny_models, teacher_pair, monkeypatch, cache
):
    """A teacher that ships calibrated changes no soft target: distill multiplies the folded T
    back, so the loss sees the logits of the same teacher saved with --calibrate-teacher off,
    and config.json records the T it undid."""
    argv = seed_quick_test(teacher_pair["off"], tiny_models["bert_student"], "--epochs", "1")
    argv += ["--max-train-samples", "16", "--calibrate-student", "off", "--teacher-cache", cache]
    seen = _capture_teacher_logits(monkeypatch)
    run_distill(argv)
    as_trained = list(seen)
    seen.clear()
    argv[argv.index(str(teacher_pair["off"]))] = str(teacher_pair["auto"])
    run = run_distill(argv)
    t = json.loads((teacher_pair["auto"] / "teacher_eval.json").read_text())["head_calibration"]
    settings = json.loads((run / "config.json").read_text())["teacher"]["settings"]
    assert settings["head_temperature_undone"] == t["temperature"] != 1.0
    assert len(seen) == len(as_trained) > 0
    for raw, undone in zip(as_trained, seen, strict=True):
        torch.testing.assert_close(undone, raw, rtol=1e-4, atol=1e-4)


def test_compare_reports_the_folded_temperature_of_students_and_teachers(tmp_path):
    """comparison_results.json and its HTML summary carry each model's folded T and its
    validation ECE before and after: a run's from its config.json, a finetune-teacher
    folder's from teacher_eval.json; 'off' and '—' where there is none."""
    from kdistill.evaluation.candidates import Candidate
    from kdistill.evaluation.html_report import SUMMARY_HEADER, _folded, _summary_rows
    from kdistill.evaluation.scoring import folded_calibration

    record = {"temperature": 0.31, "applied": True, "ece_at_1": 0.571, "ece_fitted": 0.03}
    run_config = {"calibration": {"mode": "auto", "best_model": record, "final_model": {}}}
    student = Candidate("student", "--students", "x", tmp_path / "best_model", tmp_path, run_config)
    assert folded_calibration(str(student.model_dir), student) == record
    off = Candidate("student", "--students", "x", tmp_path / "best_model", tmp_path, {})
    off.run_config = {"calibration": {"mode": "off"}}
    assert folded_calibration(str(off.model_dir), off) == {"mode": "off"}
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    assert folded_calibration(str(teacher), None) is None  # not kdistill's, or older
    (teacher / "teacher_eval.json").write_text(json.dumps({"head_calibration": record}))
    assert folded_calibration(str(teacher), None) == record
    assert _folded(record) == "0.31 (0.571 → 0.030)"
    assert _folded({"mode": "off"}) == "off" and _folded(None) == "—"
    row = _summary_rows([{"name": "s", "role": "student", "calibration": record}])[0]
    assert len(row) == len(SUMMARY_HEADER)
    assert row[SUMMARY_HEADER.index("T folded in (validation ECE before → after)")] == _folded(
        record
    )
