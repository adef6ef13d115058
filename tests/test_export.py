"""`kdistill export --format onnx` on a tiny trained classifier: the ONNX file predicts what the
torch model does (parity within tolerance), the int8 copy's agreement is reported, predict runs
the export like any model, a disagreeing export is refused with its report kept, and the folder
with its card goes to the (mocked) Hub."""

import json
import re
from pathlib import Path

import pytest
from cli_checks import one_line_error
from conftest import make_texts
from fake_hub import fake_hub

from kdistill.cli import main
from kdistill.shipping.export import format_report

pytest.importorskip("onnxruntime", reason="the [onnx] extra is part of the dev install")


def export_argv(model: Path, out: Path, *extra: str) -> list[str]:
    # No --dataset: the parity rows come from the data set in the teacher's teacher_eval.json.
    return [
        "export",
        "--model",
        str(model),
        "--output-dir",
        str(out),
        "--max-samples",
        "40",
        "--latency-rows",
        "4",
        "--repeats",
        "1",
        "--batch-size",
        "8",
        *extra,
    ]


@pytest.fixture(scope="module")
def exported(tmp_path_factory, trained_teacher):
    """The trained tiny BERT exported with an int8 copy and pushed to a mocked Hub."""
    out = tmp_path_factory.mktemp("export") / "teacher-onnx"
    with pytest.MonkeyPatch.context() as mp:
        calls = fake_hub(mp)
        # int8 on a 64-wide random-init BERT may disagree on a row or two: no threshold here,
        # its agreement is reported and checked below.
        argv = export_argv(
            trained_teacher,
            out,
            "--quantize",
            "dynamic-int8",
            "--threads",
            "1",
            "--min-agreement",
            "0",
            "--push-to-hub",
            "me/tiny-onnx",
        )
        assert main(argv) == 0
    return out, json.loads((out / "export_report.json").read_text()), calls


def test_onnx_export_matches_torch_and_reports_int8(exported):
    from huggingface_hub import ModelCard

    out, report, _ = exported
    for name in (
        "model.onnx",
        "model_quantized.onnx",
        "config.json",
        "tokenizer.json",
        "export_report.json",
        "README.md",
    ):
        assert (out / name).is_file(), name
    assert report["rows"] == 40 and report["split"] == "validation" and report["passed"]
    onnx, int8 = report["parity"]["onnx"], report["parity"]["onnx-int8"]
    assert onnx["max_abs_logit_diff"] < 1e-4 and onnx["agreement"] == 1.0
    assert onnx["accuracy"] == report["torch"]["accuracy"]
    assert 0.0 <= int8["agreement"] <= 1.0 and int8["max_abs_logit_diff"] > 0  # quantised
    assert int8["size_bytes"] < onnx["size_bytes"]
    for variant in ("torch", "onnx", "onnx-int8"):
        s = report["speed"][variant]
        assert s["latency_ms_batch_1"] > 0 and s["throughput_per_s"] > 0
        assert s["latency_ms_batch_8"] == pytest.approx(8000 / s["throughput_per_s"])
        # How sure each timing is: the interquartile range over the interleaved repeats.
        assert s["latency_ms_batch_1_iqr"][0] <= s["latency_ms_batch_1"]
        assert s["latency_ms_batch_1"] <= s["latency_ms_batch_1_iqr"][1]
        assert s["throughput_per_s_iqr"][0] <= s["throughput_per_s"] <= s["throughput_per_s_iqr"][1]
    assert report["timing"].startswith("interleaved")
    assert report["speed"]["torch"]["speedup_vs_torch"] == 1.0
    assert report["threads"] == 1
    assert "IQR ms@1" in format_report(report)
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "onnx" and "onnx" in card.data.tags
    assert card.data.labels == ["Animal", "Building", "Company", "Film"]
    assert f"{100 * int8['agreement']:.2f}%" in card.text


def test_export_is_pushed_with_its_card(exported):
    out, _, calls = exported
    create, upload = calls
    assert create["call"] == "create_repo" and create["repo_id"] == "me/tiny-onnx"
    assert create["private"] is True and create["exist_ok"] is True
    assert upload["folder_path"] == out
    assert {
        "model.onnx",
        "model_quantized.onnx",
        "README.md",
        "export_report.json",
        "config.json",
        "tokenizer.json",
    } <= set(upload["files"])


def test_predict_runs_the_onnx_export_like_the_torch_model(
    exported, trained_teacher, tmp_path, capsys
):
    out, _, _ = exported
    texts = tmp_path / "in.txt"
    texts.write_text("".join(t + "\n" for t, _ in make_texts(3, seed=4)))

    def predict(model: Path) -> list[dict]:
        capsys.readouterr()
        assert (
            main(
                ["predict", "--model", str(model), "--input", str(texts), "--mixed-precision", "no"]
            )
            == 0
        )
        return [json.loads(line) for line in capsys.readouterr().out.splitlines()]

    torch_rows, onnx_rows = predict(trained_teacher), predict(out)
    assert [r["label"] for r in onnx_rows] == [r["label"] for r in torch_rows]
    for a, b in zip(torch_rows, onnx_rows, strict=True):
        for name, p in a["probabilities"].items():
            assert b["probabilities"][name] == pytest.approx(p, abs=1e-5)
    int8_rows = predict(out / "model_quantized.onnx")
    assert len(int8_rows) == len(torch_rows)
    assert all(sum(r["probabilities"].values()) == pytest.approx(1.0, abs=1e-5) for r in int8_rows)


def test_an_export_that_disagrees_is_refused_and_its_report_kept(
    trained_teacher, tiny_models, tmp_path, capsys, monkeypatch
):
    """A quantiser that wrote the wrong model (here: another model's weights) must not pass."""
    import kdistill.shipping.export as export_module

    def wrong_model(source: Path, target: Path) -> None:
        from transformers import AutoModelForSequenceClassification

        other = AutoModelForSequenceClassification.from_pretrained(tiny_models["bert_teacher"])
        export_module.export_onnx(other, target, 18)

    monkeypatch.setattr(export_module, "quantize_int8", wrong_model)
    calls = fake_hub(monkeypatch)
    out = tmp_path / "bad-onnx"
    argv = export_argv(
        trained_teacher, out, "--quantize", "dynamic-int8", "--push-to-hub", "me/bad"
    )
    err = one_line_error(capsys, argv, after_work=True)
    assert re.search(
        r"export refused: onnx-int8 agrees with the torch model on [\d.]+% of 40 "
        r"rows, below --min-agreement 0.99",
        err,
    ), err
    report = json.loads((out / "export_report.json").read_text())
    assert report["passed"] is False and report["failed"] == ["onnx-int8"]
    assert report["parity"]["onnx"]["agreement"] == 1.0
    assert "FAILED" in (out / "README.md").read_text()
    assert calls == []  # a refused export is not published


def test_a_missing_onnx_extra_names_the_install_command(
    trained_teacher, tmp_path, capsys, monkeypatch
):
    import importlib.util

    real = importlib.util.find_spec

    def find_spec(name, *args):
        return None if name == "onnxruntime" else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    err = one_line_error(capsys, export_argv(trained_teacher, tmp_path / "o"))
    assert "onnxruntime missing" in err and "pip install 'kdistill[onnx]'" in err
    assert not (tmp_path / "o").exists()


def test_export_without_known_rows_asks_for_a_dataset(tiny_models, tmp_path, capsys):
    err = one_line_error(capsys, export_argv(tiny_models["bert_teacher"], tmp_path / "o"))
    assert "pass --dataset" in err


def test_export_never_replaces_the_model_or_a_foreign_folder(trained_teacher, tmp_path, capsys):
    err = one_line_error(capsys, export_argv(trained_teacher, trained_teacher))
    assert "would replace the model being exported" in err
    err = one_line_error(capsys, export_argv(trained_teacher, trained_teacher.parent))
    assert "would replace the model being exported" in err
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    err = one_line_error(capsys, export_argv(trained_teacher, tmp_path / "mine"))
    assert "is a folder that is not an earlier export" in err
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    assert (trained_teacher / "model.safetensors").is_file()


def test_a_decoder_only_classifier_exports_with_parity(tiny_models, labelled_csv, tmp_path):
    """Qwen2's head pools the last token that is not padding: the ONNX graph must do the same
    on padded batches of rows of different lengths."""
    out = tmp_path / "qwen-onnx"
    argv = [
        "export",
        "--model",
        str(tiny_models["qwen_teacher"]),
        "--dataset",
        str(labelled_csv),
        "--output-dir",
        str(out),
        "--max-samples",
        "24",
        "--latency-rows",
        "2",
        "--repeats",
        "1",
        "--batch-size",
        "8",
    ]
    assert main(argv) == 0
    report = json.loads((out / "export_report.json").read_text())
    assert report["parity"]["onnx"]["max_abs_logit_diff"] < 1e-4
    assert report["parity"]["onnx"]["agreement"] == 1.0 and report["passed"]
