"""No labels at all: the embedding teacher, label-free balancing, the one command (texts and
class names only, the epoch picked by agreement with the teacher) and self-training rounds."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from cli_checks import one_line_error
from conftest import CLASSES, make_texts

from kdistill.cli import main
from kdistill.errors import KdistillError
from kdistill.teachers.classifier import resolve_mode
from kdistill.teachers.label_free import (
    balance,
    fit_scale,
    mean_entropy,
    parse_class_prior,
    predicted_histogram,
)

# ---------------------------------------------------------------- label-free corrections


def test_balancing_removes_a_class_bias_without_reading_a_label():
    """Logits that know every row's class but add +3 to class 0 put most rows there; balancing
    to the uniform prior (the true one here) finds the bias and gives every row its class."""
    torch.manual_seed(0)
    n, c = 400, 4
    truth = torch.arange(n) % c
    clean = torch.randn(n, c) + 2.0 * torch.nn.functional.one_hot(truth, c)
    biased = clean + torch.tensor([3.0, 0.0, 0.0, 0.0])
    assert (biased.argmax(-1) == 0).float().mean() > 0.6
    fixed, bias = balance(biased, torch.full((c,), 1 / c))
    # Its mean predicted distribution is the prior, and the bias it found undoes the +3.
    assert torch.allclose(fixed.exp().mean(0), torch.full((c,), 1 / c), atol=1e-4)
    assert bias[0] - bias[1:].mean() == pytest.approx(-3.0, abs=0.5)
    accuracy = {
        name: (z.argmax(-1) == truth).float().mean().item()
        for name, z in (("clean", clean), ("biased", biased), ("fixed", fixed))
    }
    assert accuracy["biased"] < 0.5 < accuracy["clean"] - 0.03 < accuracy["fixed"]
    # Rows stay normalised log-probabilities.
    assert torch.allclose(fixed.exp().sum(-1), torch.ones(n), atol=1e-5)


def test_balancing_to_a_given_prior():
    logits = torch.randn(300, 3)
    prior = parse_class_prior("A=0.5,B=0.3", ["A", "B", "C"])
    assert prior.tolist() == pytest.approx([0.5, 0.3, 0.2])
    fixed, _ = balance(logits, prior)
    assert fixed.exp().mean(0).tolist() == pytest.approx([0.5, 0.3, 0.2], abs=1e-4)


@pytest.mark.parametrize(
    "spec, needle",
    [
        ("A=x", "Class=share"),
        ("A=-1", "Class=share"),
        ("Z=0.5", "unknown class 'Z'"),
        ("A=0.7,B=0.6", "sum to 1"),
        ("A=0.5,B=0.5", "sum to 1"),  # C would get nothing
    ],
)
def test_class_prior_errors_name_the_fix(spec, needle):
    with pytest.raises(KdistillError, match=needle):
        parse_class_prior(spec, ["A", "B", "C"])


def test_fitted_scale_gives_half_the_uniform_entropy():
    torch.manual_seed(1)
    cosines = 0.3 + 0.05 * torch.randn(200, 14)
    s = fit_scale(cosines)
    assert mean_entropy(cosines * s) == pytest.approx(math.log(14) / 2, abs=1e-3)
    assert predicted_histogram(cosines, [str(i) for i in range(14)]).keys() == {
        str(i) for i in range(14)
    }


# ---------------------------------------------------------------- the embedding teacher


def test_auto_mode_recognises_an_encoder_with_no_head(tiny_models):
    """A bare BertModel folder is an encoder; classifiers and causal LMs keep their modes."""
    assert resolve_mode("auto", str(tiny_models["bert_student"])) == "embedding"
    assert resolve_mode("auto", str(tiny_models["bert_teacher"])) == "classifier"
    assert resolve_mode("auto", str(tiny_models["qwen_lm"])) == "prompt"


def test_embedding_teacher_logits_are_scaled_cosines(tiny_models, tmp_path):
    from kdistill.teachers.embedding import load_embedding_teacher, read_descriptions

    spec = tmp_path / "desc.json"
    spec.write_text(json.dumps({"Film": ["a movie", "a film"]}))
    names = list(CLASSES)
    desc = read_descriptions(str(spec), "about {}.", names)
    assert desc["Film"] == ["about a movie.", "about a film."]
    assert desc["Company"] == ["about Company."]
    teacher = load_embedding_teacher(str(tiny_models["bert_student"]), names, desc, None, 7.0)
    texts = [t for t, _ in make_texts(2)]
    enc = teacher.tokenizer(texts, padding=True, return_tensors="pt")
    batch = {"teacher_input_ids": enc["input_ids"], "teacher_attention_mask": enc["attention_mask"]}
    z = teacher.logits(batch)
    assert z.shape == (len(texts), len(names))
    assert z.abs().max() <= 7.0 + 1e-4
    # The same as cosines of the library's own sentence embeddings.
    emb = teacher.model.encode(texts, convert_to_tensor=True, normalize_embeddings=True)
    assert torch.allclose(z, 7.0 * emb @ teacher.classes.T, atol=1e-4)
    # The descriptions decide the logits, so they are part of the cache key.
    assert teacher.settings()["descriptions"]["Film"] == ["about a movie.", "about a film."]


@pytest.mark.parametrize(
    "content, needle",
    [
        ("{not json", "cannot read it as JSON"),
        ('{"Spaceship": "a ship"}', "unknown class 'Spaceship'"),
        ('{"Film": []}', "has no description"),
        ('["Film"]', "must map class names"),
    ],
)
def test_bad_label_descriptions_are_one_line_errors(tmp_path, content, needle):
    from kdistill.teachers.embedding import read_descriptions

    spec = tmp_path / "d.json"
    spec.write_text(content)
    with pytest.raises(KdistillError, match=needle):
        read_descriptions(str(spec), None, list(CLASSES))


# ---------------------------------------------------------------- the one command


def write_texts(path: Path, n_per_class: int) -> Path:
    """Text without labels: a CSV with a text column and nothing else."""
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text"])
        w.writerows([t] for t, _ in make_texts(n_per_class, seed=3))
    return path


def one_command(tmp_path: Path, tiny_models, *extra: str) -> list[str]:
    return [
        "distill",
        "--dataset",
        str(write_texts(tmp_path / "texts.csv", 10)),
        "--label-names",
        ",".join(CLASSES),
        "--teacher-model",
        str(tiny_models["bert_student"]),  # a bare encoder: an embedding teacher
        "--student-model",
        str(tiny_models["bert_student"]),
        "--epochs",
        "2",
        "--mixed-precision",
        "no",
        "--allow-weak-teacher",
        "--output-dir",
        str(tmp_path / "runs"),
        *extra,
    ]


def test_one_command_trains_from_texts_and_class_names_alone(tmp_path, tiny_models, capsys):
    assert main(one_command(tmp_path, tiny_models)) == 0
    (run,) = (tmp_path / "runs").iterdir()
    config = json.loads((run / "config.json").read_text())
    history = json.loads((run / "history.json").read_text())
    data = config["data"]
    # No labelled row anywhere: 40 texts, a tenth held out for model selection.
    assert data["train_rows"] == 0 and data["label_names"] == CLASSES
    assert (data["validation_rows"], data["unlabeled_rows"]) == (4, 36)
    assert config["teacher"]["mode"] == "embedding"
    assert config["alpha"] == 1.0 and config["batch_size"] == 16  # the no-label recipe
    assert "agreement with the teacher on 4 held-out" in history["model_selection"]
    assert history["teacher_cache"]["label_free"]["balance"]["rows"] == 36
    assert history["best"]["epoch"] in (1, 2)
    # The result is a run like any other: predict reads it.
    assert main(["predict", "--model", str(run), "--text", "a film directed by"]) == 0
    assert any(name in capsys.readouterr().out for name in CLASSES)


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--label-names", "Film"], "at least two class names"),
        (["--label-names", "Film,Film"], "'Film' is given twice"),
        (["--label-names", "missing.json"], "cannot read it as JSON"),
        (["--unlabeled-data", "other.csv"], "drop --unlabeled-data"),
        (["--class-prior", "Film=2"], "sum to 1"),
        (["--embedding-scale", "-1"], "--embedding-scale must be a number > 0"),
        (["--rounds", "0"], "--rounds must be in [1, 10]"),
        (["--round-targets", "weighted"], "pass --rounds 2 or more"),
        (["--round-min-confidence", "1.5"], "--round-min-confidence must be in (0, 1)"),
        (
            ["--rounds", "2", "--round-targets", "filtered", "--teacher-cache", "off"],
            "drop --teacher-cache off",
        ),
    ],
)
def test_one_command_bad_input_is_one_line(tmp_path, tiny_models, capsys, extra, needle):
    line = one_line_error(capsys, one_command(tmp_path, tiny_models, *extra), after_work=True)
    assert needle in line


def test_rounds_relabel_with_the_student_and_record_each_round(tmp_path, tiny_models):
    argv = one_command(tmp_path, tiny_models, "--rounds", "2", "--epochs", "1")
    assert main(argv) == 0
    (parent,) = (tmp_path / "runs").glob("rounds_*")
    record = json.loads((parent / "rounds.json").read_text())
    assert [r["round"] for r in record["rounds"]] == [1, 2]
    first, second = record["rounds"]
    # Round 2's teacher is the teacher with round 1's student in an ensemble.
    assert second["teacher"].endswith(str(Path(first["run"]) / "best_model"))
    config = json.loads((Path(second["run"]) / "config.json").read_text())
    assert config["teacher"]["mode"] == "ensemble"
    assert 0.0 <= second["agreement_with_previous"] <= 1.0
    assert record["final_run"] == second["run"]


def test_a_filtered_round_trains_on_fewer_rows_and_says_so(tmp_path, tiny_models):
    """Round 2 drops the transfer rows its relabeller is unsure of (a threshold no row of a
    random toy model reaches): each class keeps its floor, and the round trains on those."""
    argv = one_command(tmp_path, tiny_models, "--rounds", "2", "--epochs", "1")
    argv += ["--round-targets", "filtered", "--round-min-confidence", "0.99"]
    assert main(argv) == 0
    (parent,) = (tmp_path / "runs").glob("rounds_*")
    record = json.loads((parent / "rounds.json").read_text())
    assert record["round_targets"] == "filtered"
    first, second = record["rounds"]
    assert first["targets"]["mode"] == "soft" and first["targets"]["kept_rows"] == 36
    targets = second["targets"]
    assert targets["mode"] == "filtered" and targets["transfer_rows"] == 36
    assert 0 < targets["kept_rows"] < 36 and targets["kept_by_floor"]
    assert 0 < targets["mean_confidence"] < 1
    history = json.loads((Path(second["run"]) / "history.json").read_text())
    config = json.loads((Path(second["run"]) / "config.json").read_text())
    assert config["data"]["unlabeled_rows"] == targets["kept_rows"]
    assert history["epochs"][0]["train_samples"] == targets["kept_rows"]


def test_a_weighted_round_records_its_confidence_weights(tmp_path, tiny_models):
    argv = one_command(tmp_path, tiny_models, "--rounds", "2", "--epochs", "1")
    assert main([*argv, "--round-targets", "weighted"]) == 0
    (parent,) = (tmp_path / "runs").glob("rounds_*")
    second = json.loads((parent / "rounds.json").read_text())["rounds"][1]
    targets = second["targets"]
    assert targets["mode"] == "weighted" and targets["kept_rows"] == 36
    assert targets["weight_min"] <= 1.0 <= targets["weight_max"]
    history = json.loads((Path(second["run"]) / "history.json").read_text())
    assert history["epochs"][0]["train_samples"] == 36


def test_agreement_weights_need_no_label_and_are_recorded(tmp_path, tiny_models):
    """A three-member ensemble on texts alone, weighted by agreement: config.json shows the
    weights fitted on the held-out slice's pass, history.json those of the transfer set's."""
    more = [str(tiny_models["bert_student"]), str(tiny_models["qwen_lm"])]
    argv = one_command(tmp_path, tiny_models, "--epochs", "1", "--teacher-weights", "agreement")
    assert main([*argv, "--teacher-model", more[0], "--teacher-model", more[1]]) == 0
    (run,) = (tmp_path / "runs").iterdir()
    settings = json.loads((run / "config.json").read_text())["teacher"]["settings"]
    assert settings["weight_rule"] == "agreement" and settings["weights_fitted_on"] == 4
    cache = json.loads((run / "history.json").read_text())["teacher_cache"]
    assert cache["weight_rule"] == "agreement" and len(cache["weights"]) == 3
    assert sum(cache["weights"]) == pytest.approx(1.0)


def test_eval_teacher_reports_the_predicted_class_histogram(tmp_path, tiny_models, workdir):
    out = tmp_path / "report.json"
    argv = ["eval-teacher", "--dataset", "toy", "--teacher-model", str(tiny_models["bert_student"])]
    assert main([*argv, "--output", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["mode"] == "embedding"
    assert sum(report["predicted"].values()) == report["rows"]
    assert report["teacher_cache"]["label_free"]["balance"]["rows"] == report["rows"]


# ---------------------------------------------------------------- the real thing


@pytest.mark.slow
def test_minilm_template_and_balancing_beat_bare_class_names(minilm_path, dbpedia_csv, tmp_path):
    """all-MiniLM-L6-v2 on 280 DBpedia rows (20 a class): the template and label-free
    balancing each add accuracy; deterministic (no sampling, no training)."""
    import pandas as pd

    from kdistill.teachers.embedding import load_embedding_teacher, read_descriptions
    from kdistill.teachers.label_free import balance

    df = pd.read_csv(dbpedia_csv).groupby("label").head(20)
    names = sorted(df["label"].unique())
    labels = torch.tensor([names.index(x) for x in df["label"]])

    def accuracy(template: str | None, balanced: bool) -> float:
        desc = read_descriptions(None, template, names)
        t = load_embedding_teacher(str(minilm_path), names, desc, None)
        texts = list(df["text"])
        enc = t.tokenizer(texts, truncation=True, max_length=128, padding=True, return_tensors="pt")
        z = t.logits(
            {"teacher_input_ids": enc["input_ids"], "teacher_attention_mask": enc["attention_mask"]}
        )
        if balanced:
            z, _ = balance(z, torch.full((len(names),), 1 / len(names)))
        return (z.argmax(-1) == labels).float().mean().item()

    bare = accuracy(None, False)
    templated = accuracy("A Wikipedia article about a {}.", False)
    both = accuracy("A Wikipedia article about a {}.", True)
    assert 0.5 < bare < templated < both


def test_a_prompt_llm_and_an_encoder_make_one_ensemble(tmp_path, tiny_models, workdir):
    """Heterogeneous ensemble through today's flags: a causal LM (prompt) and a bare encoder
    (embedding), each told apart by auto, each with its own template, cached per member."""
    out = tmp_path / "report.json"
    teachers = f"{tiny_models['qwen_lm']},{tiny_models['bert_student']}"
    argv = [
        "eval-teacher",
        "--dataset",
        "toy",
        "--teacher-model",
        teachers,
        "--prompt-template",
        "Text: {text}\nTopic:",  # the LLM's prompt
        "--prompt-template",
        "a text about {}",  # the encoder's class descriptions
        "--output",
        str(out),
    ]
    assert main(argv) == 0
    report = json.loads(out.read_text())
    assert report["mode"] == "ensemble"
    members = report["settings"]["members"]
    assert [m["mode"] for m in members] == ["prompt", "embedding"]
    assert members[0]["settings"]["template"] == "Text: {text}\nTopic:"
    assert members[1]["settings"]["descriptions"]["Film"] == ["a text about Film"]
    # Each member scored, then the ensemble, on the same rows.
    assert [m["member"] for m in report["members"]][-1] == "ensemble"
    assert len(report["members"]) == 3 and sum(report["predicted"].values()) == report["rows"]
