"""Model cards and --push-to-hub: every saved model folder carries a README.md whose metadata
huggingface_hub parses and whose numbers are history.json's (or teacher_eval.json's); a compared
student's card gains its test metrics; a push sends the folder with its card to the (mocked)
Hub, and a failed push leaves the run complete on disk."""

import json
import re
from pathlib import Path

import pytest
from cli_checks import one_line_error
from conftest import CLASSES, write_toy_csv
from fake_hub import fake_hub

from kdistill.cli import main


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("card-data")
    csv = write_toy_csv(root / "toy.csv", 12, seed=2)
    assert main(["prepare-data", "--dataset", str(csv), "--data-dir", str(root)]) == 0
    return root / "toy"


def distill_argv(data: Path, tiny_models, out: Path, *extra: str) -> list[str]:
    return [
        "distill",
        "--dataset",
        str(data),
        "--teacher-model",
        str(tiny_models["bert_teacher"]),
        "--student-model",
        str(tiny_models["bert_student"]),
        "--student-layers",
        "1",
        "--epochs",
        "2",
        "--batch-size",
        "8",
        "--mixed-precision",
        "no",
        "--allow-weak-teacher",
        "--output-dir",
        str(out),
        *extra,
    ]


def only_run(parent: Path) -> Path:
    (run,) = [p for p in parent.iterdir() if p.is_dir()]
    return run


@pytest.fixture(scope="module")
def pushed_run(tmp_path_factory, data, tiny_models):
    """A distill run pushed to a mocked Hub."""
    out = tmp_path_factory.mktemp("card-runs")
    with pytest.MonkeyPatch.context() as mp:
        calls = fake_hub(mp)
        assert main(distill_argv(data, tiny_models, out, "--push-to-hub", "me/student")) == 0
    return only_run(out), calls


def test_every_saved_model_has_a_card_with_history_numbers(pushed_run):
    from huggingface_hub import ModelCard

    run, _ = pushed_run
    history = json.loads((run / "history.json").read_text())
    config = json.loads((run / "config.json").read_text())
    epochs = {e["epoch"]: e for e in history["epochs"]}
    for folder, epoch in (("best_model", history["best"]["epoch"]), ("final_model", 2)):
        card = ModelCard.load(run / folder / "README.md")
        meta = card.data
        assert meta.library_name == "transformers" and meta.pipeline_tag == "text-classification"
        assert meta.labels == CLASSES
        assert meta.metrics == ["accuracy", "f1"]
        values = {(r.dataset_split, r.metric_type): r.metric_value for r in meta.eval_results}
        assert values == {
            ("validation", "accuracy"): epochs[epoch]["val_accuracy"],
            ("validation", "f1"): epochs[epoch]["val_macro_f1"],
        }
        assert meta.to_dict()["model-index"][0]["name"] == (
            run.name if folder == "best_model" else f"{run.name}/{folder}"
        )
        text = card.text
        assert f"| temperature T | {config['temperature']} |" in text
        assert f"| alpha | {config['alpha']} |" in text
        assert f"{100 * history['teacher']['val_accuracy']:.2f}%" in text
        assert f"{100 * epochs[epoch]['val_accuracy']:.2f}%" in text
        assert f"{config['data']['train_rows']} labelled training rows" in text
        assert 'pipeline("text-classification"' in text and "kdistill predict --model" in text
    # The pushed card names the repo; the final model's names its folder.
    assert 'model="me/student"' in (run / "best_model" / "README.md").read_text()
    assert f'model="{run / "final_model"}"' in (run / "final_model" / "README.md").read_text()


def test_distill_pushes_best_model_with_its_card_privately(pushed_run):
    run, calls = pushed_run
    create, upload = calls
    assert create == {
        "call": "create_repo",
        "repo_id": "me/student",
        "private": True,
        "repo_type": "model",
        "exist_ok": True,
    }
    assert upload["repo_id"] == "me/student" and upload["folder_path"] == run / "best_model"
    assert {"README.md", "config.json", "model.safetensors", "tokenizer.json"} <= set(
        upload["files"]
    )


def test_a_failed_push_is_one_line_and_the_run_stays_complete(
    tmp_path, data, tiny_models, capsys, monkeypatch
):
    calls = fake_hub(monkeypatch, fail=ConnectionError("Failed to resolve 'huggingface.co'\nmore"))
    out = tmp_path / "runs"
    argv = distill_argv(data, tiny_models, out, "--push-to-hub", "me/student", "--hub-public")
    err = one_line_error(capsys, argv, after_work=True)
    run = only_run(out)
    assert not run.name.endswith(".partial")
    assert re.search(
        r"--push-to-hub me/student: the upload failed \(ConnectionError: Failed to "
        r"resolve 'huggingface.co'\); the model is saved at .*best_model; upload "
        r"it later with: hf upload me/student ",
        err,
    ), err
    assert calls[0]["private"] is False  # --hub-public
    history = json.loads((run / "history.json").read_text())
    assert history["completed"]
    for folder in ("best_model", "final_model"):
        assert (run / folder / "model.safetensors").is_file()
        assert (run / folder / "README.md").is_file()


def test_a_bad_repo_id_fails_before_training(tmp_path, data, tiny_models, capsys):
    err = one_line_error(
        capsys,
        distill_argv(data, tiny_models, tmp_path / "runs", "--push-to-hub", "not a repo//id"),
    )
    assert "--push-to-hub 'not a repo//id': not a Hub repo id" in err
    assert not (tmp_path / "runs").exists()


def test_a_comparison_adds_test_metrics_and_cost_to_the_card(pushed_run, tmp_path):
    import shutil

    from huggingface_hub import ModelCard

    from kdistill.shipping.model_card import add_comparison_to_cards

    run = tmp_path / pushed_run[0].name  # a copy: the other tests read the original's cards
    shutil.copytree(pushed_run[0], run)
    # compare's results for this model (the numbers are compare's; see test_compare).
    student = {
        "name": run.name,
        "role": "student",
        "path": str(run / "best_model"),
        "run_dir": str(run),
        "accuracy": 0.8125,
        "macro_f1": 0.8,
        "parameters": 100_000,
        "agreement_with_teacher": 0.9,
        "latency_ms_batch_1": 2.0,
        "throughput_per_s": 900.0,
        "speedup_vs_teacher": 3.0,
        "throughput_ratio_vs_teacher": 2.5,
        "compression_vs_teacher": 4.0,
        "size_on_disk_bytes": 400_000,
    }
    teacher = {
        **student,
        "name": "teacher",
        "role": "teacher",
        "path": "t",
        "run_dir": None,
        "accuracy": 0.875,
        "latency_ms_batch_1": 6.0,
        "parameters": 400_000,
    }
    results = {
        "dataset": {"split": "test", "rows": 16},
        "device": "cpu",
        "created": "2026-11-29T05:00:00",
        "speed_settings": {"throughput_batch_size": 32},
        "models": [teacher, student],
    }
    add_comparison_to_cards(results)
    card = ModelCard.load(run / "best_model" / "README.md")
    values = {(r.dataset_split, r.metric_type): r.metric_value for r in card.data.eval_results}
    assert values[("test", "accuracy")] == 0.8125 and values[("test", "f1")] == 0.8
    history = json.loads((run / "history.json").read_text())
    assert values[("validation", "accuracy")] == history["best"]["val_accuracy"]
    assert "| latency at batch 1 | 2.00 ms | 6.00 ms | 3.00x faster |" in card.text
    assert "4.00x smaller" in card.text
    # The final model was not compared: its card is unchanged.
    final = ModelCard.load(run / "final_model" / "README.md")
    assert {r.dataset_split for r in final.data.eval_results} == {"validation"}


def test_a_card_that_cannot_be_built_only_warns(pushed_run, monkeypatch, caplog):
    import kdistill.shipping.model_card as model_card

    run, _ = pushed_run
    before = (run / "best_model" / "README.md").read_text()

    def broken(*args, **kwargs):
        raise RuntimeError("template exploded")

    monkeypatch.setattr(model_card, "build_card", broken)
    model_card.write_run_cards(run)  # no exception
    assert "template exploded" in caplog.text
    assert (run / "best_model" / "README.md").read_text() == before


def test_finetune_teacher_card_and_push(tmp_path, tiny_models, monkeypatch):
    from huggingface_hub import ModelCard

    calls = fake_hub(monkeypatch)
    csv = write_toy_csv(tmp_path / "toy.csv", 12, seed=1)
    assert (
        main(
            [
                "finetune-teacher",
                "--model",
                str(tiny_models["bert_student"]),
                "--dataset",
                str(csv),
                "--output-dir",
                str(tmp_path / "models"),
                "--name",
                "t",
                "--epochs",
                "1",
                "--batch-size",
                "8",
                "--mixed-precision",
                "no",
                "--push-to-hub",
                "me/teacher",
            ]
        )
        == 0
    )
    folder = tmp_path / "models" / "t"
    report = json.loads((folder / "teacher_eval.json").read_text())
    card = ModelCard.load(folder / "README.md")
    values = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert values == {"accuracy": report["val_accuracy"], "f1": report["val_macro_f1"]}
    assert card.data.labels == report["label_names"] and "teacher" in card.data.tags
    assert "full fine-tuning" in card.text and 'model="me/teacher"' in card.text
    assert [c["call"] for c in calls] == ["create_repo", "upload_folder"]
    assert calls[1]["folder_path"] == folder and "README.md" in calls[1]["files"]


def test_sweep_refuses_push_to_hub(capsys):
    err = one_line_error(capsys, ["sweep", "--push-to-hub", "me/x"])
    assert "a sweep trains one student per grid point" in err


def test_an_alpha_zero_run_is_carded_as_the_baseline_not_as_distilled(tmp_path, data, tiny_models):
    """An --alpha 0 run never loads a teacher, so its card must not claim one taught it."""
    from huggingface_hub import ModelCard

    assert main(distill_argv(data, tiny_models, tmp_path, "--alpha", "0")) == 0
    text = ModelCard.load(only_run(tmp_path) / "best_model" / "README.md").text
    assert "labels alone (`--alpha 0`)" in text
    assert "distilled by kdistill from a larger teacher" not in text
    assert "| loss | CE(student, label) |" in text
    assert str(tiny_models["bert_teacher"]) not in text
