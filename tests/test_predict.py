"""`kdistill predict`: the same rows give the same predictions whether they come as --text, a
CSV, a JSONL or a text file; the probabilities are the model's own (checked row by row against a
plain forward pass); bad input ends in one line with exit status 2."""

import csv
import json
import re
from pathlib import Path

import pytest
import torch
from conftest import CLASSES, make_texts

from kdistill.cli import main
from kdistill.shipping.predictor import length_batches

# Texts with commas, quotes and a long one, so CSV quoting and truncation are exercised.
EXTRA = ['a film, "directed" by someone, starring actors', " ".join(["species"] * 200)]


def texts() -> list[str]:
    return [t for t, _ in make_texts(3, seed=11)] + EXTRA


def one_line_error(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exc:
        raise SystemExit(main(argv))
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith("kdistill: error: "), err
    return err


def run_predict(capsys, *argv: str) -> list[dict]:
    capsys.readouterr()
    assert main(["predict", "--mixed-precision", "no", *argv]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def write_inputs(tmp_path: Path, rows: list[str]) -> dict[str, Path]:
    paths = {"csv": tmp_path / "in.csv", "jsonl": tmp_path / "in.jsonl", "txt": tmp_path / "in.txt"}
    with paths["csv"].open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "body"])
        w.writerows([[i, t] for i, t in enumerate(rows)])
    paths["jsonl"].write_text(
        "".join(json.dumps({"id": i, "body": t}) + "\n" for i, t in enumerate(rows))
    )
    paths["txt"].write_text("".join(t + "\n" for t in rows))
    return paths


def test_text_csv_jsonl_and_txt_give_the_models_own_predictions(tmp_path, capsys, trained_teacher):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    rows = texts()
    paths = write_inputs(tmp_path, rows)
    # --batch-size 4: several length-sorted batches, put back in input order.
    common = ["--model", str(trained_teacher), "--batch-size", "4"]
    results = {}
    for kind in ("csv", "jsonl"):
        out = tmp_path / f"{kind}.preds.jsonl"
        assert (
            main(
                [
                    "predict",
                    *common,
                    "--mixed-precision",
                    "no",
                    "--input",
                    str(paths[kind]),
                    "--text-column",
                    "body",
                    "--output",
                    str(out),
                ]
            )
            == 0
        )
        results[kind] = read_jsonl(out)
    results["txt"] = run_predict(capsys, *common, "--input", str(paths["txt"]))
    results["text"] = [run_predict(capsys, *common, "--text", t)[0] for t in rows]

    # The reference: each row alone through the model, no padding, no batching.
    tok = AutoTokenizer.from_pretrained(trained_teacher)
    model = AutoModelForSequenceClassification.from_pretrained(trained_teacher).eval()
    names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    with torch.no_grad():
        expected = [
            torch.softmax(
                model(**tok(t, truncation=True, max_length=128, return_tensors="pt")).logits[0], -1
            )
            for t in rows
        ]
    for kind, preds in results.items():
        if kind != "text":  # one --text is row 0 of its own input
            assert [p["row"] for p in preds] == list(range(len(rows))), kind
        assert [p["text"] for p in preds] == rows, kind
        for p, probs in zip(preds, expected, strict=True):
            assert list(p["probabilities"]) == sorted(names, key=lambda n: -probs[names.index(n)])
            assert p["label"] == names[int(probs.argmax())]
            assert p["score"] == p["probabilities"][p["label"]]
            for name, value in p["probabilities"].items():
                assert value == pytest.approx(float(probs[names.index(name)]), abs=1e-5)
            assert sum(p["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    # Same rows, same answers, whichever way they came in.
    for kind in ("jsonl", "txt", "text"):
        assert [p["label"] for p in results[kind]] == [p["label"] for p in results["csv"]]
    assert sorted(set(CLASSES)) == sorted(names)


def test_padded_batches_of_a_decoder_only_model_match_single_rows(tmp_path, capsys, tiny_models):
    """Qwen2's head reads the last token that is not padding: batching rows of different
    lengths must not change any row's prediction."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = tiny_models["qwen_teacher"]
    rows = texts()
    (tmp_path / "in.txt").write_text("".join(t + "\n" for t in rows))
    preds = run_predict(
        capsys, "--model", str(path), "--input", str(tmp_path / "in.txt"), "--batch-size", "3"
    )
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    for p, t in zip(preds, rows, strict=True):
        with torch.no_grad():
            probs = torch.softmax(
                model(**tok(t, truncation=True, max_length=128, return_tensors="pt")).logits[0], -1
            )
        for name, value in p["probabilities"].items():
            assert value == pytest.approx(float(probs[model.config.label2id[name]]), abs=1e-5)


def test_top_k_keeps_the_most_probable_classes(capsys, trained_teacher):
    (full,) = run_predict(capsys, "--model", str(trained_teacher), "--text", EXTRA[0])
    (top,) = run_predict(
        capsys, "--model", str(trained_teacher), "--text", EXTRA[0], "--top-k", "2"
    )
    assert list(top["probabilities"].items()) == list(full["probabilities"].items())[:2]
    assert top["label"] == full["label"] == next(iter(full["probabilities"]))


def test_length_batches_cover_every_row_once_with_similar_lengths():
    lengths = [5, 50, 7, 49, 6, 48, 8]
    batches = length_batches(lengths, 3)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert [sorted(lengths[i] for i in b) for b in batches] == [[48, 49, 50], [6, 7, 8], [5]]


def test_an_output_file_is_written_whole(tmp_path, capsys, trained_teacher):
    out = tmp_path / "sub" / "preds.jsonl"
    paths = write_inputs(tmp_path, texts())
    assert (
        main(
            [
                "predict",
                "--model",
                str(trained_teacher),
                "--input",
                str(paths["txt"]),
                "--output",
                str(out),
            ]
        )
        == 0
    )
    assert capsys.readouterr().out.strip() == str(out)
    assert len(read_jsonl(out)) == len(texts())
    assert [p.name for p in out.parent.iterdir()] == ["preds.jsonl"]  # no temporary left


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        (lambda d: (["--model", str(d / "nowhere"), "--text", "x"]), "no such folder"),
        (lambda d: (["--model", "{teacher}", "--input", str(_write(d / "e.csv", ""))]), "is empty"),
        (
            lambda d: (["--model", "{teacher}", "--input", str(_write(d / "h.csv", "text,id\n"))]),
            "has no rows",
        ),
        (
            lambda d: (
                [
                    "--model",
                    "{teacher}",
                    "--input",
                    str(_write(d / "c.csv", "body,id\nhello,1\n")),
                    "--text-column",
                    "text",
                ]
            ),
            r"no column 'text' \(columns: body, id\); choose one with --text-column",
        ),
        (
            lambda d: (
                ["--model", "{teacher}", "--input", str(_write(d / "c.jsonl", '{"body": "x"}\n'))]
            ),
            "no column 'text'",
        ),
        (
            lambda d: (["--model", "{teacher}", "--input", str(_write(d / "x.docx", "hi"))]),
            "unsupported file type",
        ),
        (lambda d: (["--model", "{teacher}", "--input", str(d / "missing.csv")]), "no such file"),
        (lambda d: (["--model", "{teacher}"]), r"pass --text .* or --input FILE"),
        (lambda d: (["--model", "{teacher}", "--text", "a", "--input", "b.csv"]), "one of them"),
        (lambda d: (["--model", "{teacher}", "--text", "a", "--top-k", "0"]), "--top-k must be"),
        (lambda d: (["--text", "a"]), "--model: pass the model folder"),
        (lambda d: (["--model", "{untrained}", "--text", "a"]), "no trained classification head"),
    ],
)
def test_bad_input_gets_one_line(tmp_path, capsys, trained_teacher, tiny_models, setup, expected):
    argv = [
        a.format(teacher=trained_teacher, untrained=tiny_models["bert_student"])
        for a in setup(tmp_path)
    ]
    assert re.search(expected, one_line_error(capsys, ["predict", *argv]))


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
