"""The report from synthetic results: figures are real PNGs of sane size, the HTML is
self-contained, escapes what it is given and renders in headless Chromium without errors."""

from __future__ import annotations

import copy
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from kdistill.evaluation.comparison_figure import plot_comparison
from kdistill.evaluation.html_report import write_html_report
from kdistill.evaluation.report import plot_sweep_heatmap, plot_training_curves

DBPEDIA = [
    "Album",
    "Animal",
    "Artist",
    "Athlete",
    "Building",
    "Company",
    "EducationalInstitution",
    "Film",
    "MeanOfTransportation",
    "NaturalPlace",
    "OfficeHolder",
    "Plant",
    "Village",
    "WrittenWork",
]
# Classes DBpedia models actually mix up: the errors land on these first.
CONFUSABLE = {
    "Album": "Film",
    "Artist": "Athlete",
    "Building": "EducationalInstitution",
    "Village": "NaturalPlace",
    "Plant": "Animal",
    "WrittenWork": "Film",
    "OfficeHolder": "Artist",
    "Company": "MeanOfTransportation",
}


def confusion(counts: list[int], accuracy: float, rng: np.random.Generator) -> np.ndarray:
    n = len(counts)
    cm = np.zeros((n, n), dtype=int)
    for r, count in enumerate(counts):
        wrong = rng.binomial(count, 1 - accuracy)
        cm[r, r] = count - wrong
        near = DBPEDIA.index(CONFUSABLE.get(DBPEDIA[r], DBPEDIA[(r + 1) % n]))
        to_near = wrong * 2 // 3
        cm[r, near] += to_near
        for c in rng.integers(0, n, wrong - to_near):
            cm[r, c] += 1
    return cm


def model_entry(
    name: str,
    role: str,
    accuracy: float,
    latency: float,
    params: float,
    counts: list[int],
    rng: np.random.Generator,
) -> dict[str, Any]:
    cm = confusion(counts, accuracy, rng)
    tp, predicted, support = np.diag(cm), cm.sum(0), cm.sum(1)
    precision = np.divide(tp, predicted, out=np.zeros(len(tp)), where=predicted > 0)
    recall = tp / support
    f1 = np.divide(
        2 * precision * recall,
        precision + recall,
        out=np.zeros(len(tp)),
        where=precision + recall > 0,
    )
    teacher_params, teacher_latency = 1.54e9, 180.0
    return {
        "name": name,
        "role": role,
        "path": f"outputs/{name}/best_model",
        "run_dir": None,
        "run_config": None
        if role == "teacher"
        else {
            "kind": "distill",
            "temperature": 3.0,
            "alpha": 0.0 if role == "baseline" else 0.7,
            "epochs": 3,
            "data": {"train_rows": 4000, "label_names": DBPEDIA},
        },
        "history": None,
        "mode": "prompt" if role == "teacher" else "classifier",
        "parameters": int(params),
        "size_on_disk_bytes": int(params * 2),
        "accuracy": float(tp.sum() / cm.sum()),
        "macro_f1": float(f1.mean()),
        "loss": 0.3,
        "accuracy_ci": [0.88, 0.95],
        "macro_f1_ci": [0.87, 0.94],
        "ece": 0.04,
        "per_class": {
            label: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for label, p, r, f, s in zip(DBPEDIA, precision, recall, f1, support, strict=True)
        },
        "confusion_matrix": cm.tolist(),
        "agreement_with_teacher": 1.0 if role == "teacher" else accuracy - 0.01,
        "kl_to_teacher": 0.0 if role == "teacher" else 0.21,
        "latency_ms_batch_1": latency,
        "throughput_per_s": 1000 / latency * 6,
        "speedup_vs_teacher": teacher_latency / latency,
        "throughput_ratio_vs_teacher": teacher_latency / latency,
        "compression_vs_teacher": teacher_params / params,
        "training_data": {
            "labeled_rows": None if role == "teacher" else 4000,
            "unlabeled_rows": None if role == "teacher" else 0,
        },
    }


def make_results(n_students: int = 2, baseline: bool = True) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    counts = [int(c) for c in rng.integers(68, 82, len(DBPEDIA))]
    models = [model_entry("teacher", "teacher", 0.975, 180.0, 1.54e9, counts, rng)]
    for i in range(n_students):
        name = f"dbpedia_T{2.0 + i}_A0.7_20261128_1{i}0000"
        models.append(model_entry(name, "student", 0.955 - 0.01 * i, 5.0 + i, 22.7e6, counts, rng))
    if baseline:
        base = "dbpedia_T1.0_A0.0_20261128_150000"
        models.append(model_entry(base, "baseline", 0.93, 5.1, 22.7e6, counts, rng))
    gain = None
    if baseline:
        ce = models[-1]
        gain = {
            "baseline": base,
            "baseline_valid": True,
            "baseline_problems": [],
            "students": [
                {
                    "student": m["name"],
                    "accuracy_points": 100 * (m["accuracy"] - ce["accuracy"]),
                    "macro_f1_points": 100 * (m["macro_f1"] - ce["macro_f1"]),
                    "accuracy_points_ci": [0.4, 4.1],
                    "macro_f1_points_ci": [-0.3, 3.8],
                    "accuracy_within_noise": False,
                    "macro_f1_within_noise": True,
                }
                for m in models[1:-1]
            ],
            "not_comparable": [
                {"student": "a <b>cut</b> student", "differences": ["student_layers 0,5 vs <None>"]}
            ],
        }
    return {
        "schema_version": 1,
        "created": "2026-11-28T12:00:00",
        "dataset": {
            "name": "dbpedia",
            "source": "data/dbpedia",
            "split": "test",
            "rows": sum(counts),
            "label_names": DBPEDIA,
            "class_counts": counts,
        },
        "device": "cpu",
        "mixed_precision": "no",
        "versions": {"torch": "2.5.1"},
        "config": {},
        "models": models,
        "distillation_gain": gain,
        "speed_settings": {
            "latency_rows": 32,
            "throughput_batch_size": 32,
            "repeats": 3,
            "max_length": 128,
        },
        "files": {
            "json": "comparison_results.json",
            "figure": "teacher_student_comparison.png",
            "html": "report.html",
        },
    }


def make_history(n_epochs: int = 3, completed: bool = True) -> dict[str, Any]:
    epochs = [
        {
            "epoch": e,
            "train_loss": 1.2 / e,
            "train_kl": 0.9 / e,
            "train_ce": 0.8 / e**1.5,
            "train_samples": 4000,
            "samples_per_second": 150.0,
            "epoch_time_s": 26.0,
            "val_loss": 0.4 / e,
            "val_accuracy": 0.90 + 0.02 * e,
            "val_macro_f1": 0.89 + 0.02 * e,
            "learning_rate": 5e-5 / e,
            "wall_time_s": 30.0 * e,
        }
        for e in range(1, n_epochs + 1)
    ]
    history = {
        "teacher": {"val_accuracy": 0.975, "val_macro_f1": 0.974, "val_loss": 0.1},
        "chance_accuracy": 1 / 14,
        "teacher_cache": {"mode": "off"},
        "epochs": epochs,
    }
    if epochs:
        history["best"] = {"epoch": n_epochs, "val_accuracy": epochs[-1]["val_accuracy"]}
    if completed:
        history |= {"total_time_s": 90.0, "completed": "2026-11-28T12:00:00"}
    return history


def make_sweep() -> dict[str, Any]:
    temps, alphas = [1.0, 2.0, 4.0], [0.0, 0.5, 0.9]
    runs = []
    for t in temps:
        for a in alphas:
            failed = (t, a) == (4.0, 0.9)
            runs.append(
                {
                    "temperature": t,
                    "alpha": a,
                    "status": "failed" if failed else "completed",
                    "run_dir": None if failed else f"out/dbpedia_T{t}_A{a}",
                    "best_val_accuracy": None if failed else 0.92 + 0.01 * t + 0.02 * a,
                    "best_epoch": None if failed else 3,
                    "best_val_macro_f1": None,
                    "duration_s": 60.0,
                    "error": "out of memory" if failed else None,
                }
            )
    best = max(
        (r for r in runs if r["status"] == "completed"), key=lambda r: r["best_val_accuracy"]
    )
    return {
        "schema_version": 1,
        "dataset": "dbpedia",
        "teacher_model": "teacher",
        "student_model": "student",
        "temperatures": temps,
        "alphas": alphas,
        "teacher_val_accuracy": 0.975,
        "runs": runs,
        "best": best,
        "files": {"json": "sweep.json", "heatmap": "sweep_heatmap.png"},
    }


def png_size(path: Path, min_kb: float = 15) -> tuple[int, int]:
    """(width, height) after checking the file is a decodable PNG with real content."""
    assert path.stat().st_size > min_kb * 1024, f"{path.name} is suspiciously small"
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.load()
        assert 400 <= im.width <= 4000 and 300 <= im.height <= 4000, im.size
        assert len(set(im.convert("L").getdata())) > 10, "image is (almost) blank"
        return im.size


@pytest.mark.parametrize(
    "n_epochs, completed",
    [(3, True), (1, True), (2, False), (0, False)],
    ids=["3-epochs", "1-epoch", "in-progress", "no-epoch-yet"],
)
def test_training_curves(tmp_path: Path, n_epochs: int, completed: bool) -> None:
    path = tmp_path / "training_curves.png"
    plot_training_curves(make_history(n_epochs, completed), path)
    png_size(path)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left behind


def test_comparison_figure_scales_with_models(tmp_path: Path) -> None:
    sizes = {}
    for n_students, baseline in ((1, False), (2, True), (5, False)):
        path = tmp_path / f"comparison_{n_students}.png"
        plot_comparison(make_results(n_students, baseline), path)
        sizes[n_students] = png_size(path, min_kb=60)
    assert sizes[1][1] < sizes[2][1] < sizes[5][1] + 1  # taller with more models
    assert sizes[1][1] < sizes[5][1]


def test_sweep_heatmap(tmp_path: Path) -> None:
    path = tmp_path / "sweep_heatmap.png"
    plot_sweep_heatmap(make_sweep(), path)
    png_size(path)


def test_sweep_heatmap_all_failed(tmp_path: Path) -> None:
    sweep = make_sweep()
    for run in sweep["runs"]:
        run |= {"status": "failed", "best_val_accuracy": None}
    sweep |= {"best": None, "teacher_val_accuracy": None}
    path = tmp_path / "sweep_heatmap.png"
    plot_sweep_heatmap(sweep, path)
    png_size(path, min_kb=5)


def build_report(tmp_path: Path, results: dict[str, Any]) -> tuple[Path, dict[str, Path]]:
    figures = {
        "Teacher vs students": tmp_path / "comparison.png",
        "Training curves of the first student": tmp_path / "curves.png",
    }
    plot_comparison(results, figures["Teacher vs students"])
    plot_training_curves(make_history(), figures["Training curves of the first student"])
    path = tmp_path / "report.html"
    write_html_report(results, path, figures | {"missing figure": tmp_path / "absent.png"})
    return path, figures


def test_html_report_is_self_contained(tmp_path: Path) -> None:
    results = make_results()
    path, figures = build_report(tmp_path, results)
    text = path.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and '<meta charset="utf-8">' in text
    for m in results["models"]:
        assert m["name"] in text
    gain = results["distillation_gain"]["students"][0]
    assert f"{gain['accuracy_points']:+.1f} accuracy points" in text
    assert "a &lt;b&gt;cut&lt;/b&gt; student</b>: no gain reported" in text
    assert "student_layers 0,5 vs &lt;None&gt;" in text  # what differs, escaped
    assert "(95% interval +0.4 – +4.1)" in text  # the gain's paired interval
    assert "(95% interval -0.3 – +3.8, <b>within noise</b>)" in text  # spans 0
    assert "88.0 – 95.0" in text  # a model's accuracy interval, in percent
    assert "cross-entropy-only baseline" in text
    assert text.count('src="data:image/png;base64,') == len(figures)  # the missing one left out
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", text)
    assert "<script" not in text and "<link" not in text
    assert "&quot;temperature&quot;: 3.0" in text  # run configs are embedded
    assert "EducationalInstitution" in text  # per-class tables


def test_names_are_escaped(tmp_path: Path) -> None:
    """HTML in a name stays text in the report; '$' in a name would otherwise be parsed as
    matplotlib maths (and 'x^$' fails to parse), so the figures must draw it literally."""
    results = copy.deepcopy(make_results(1, baseline=False))
    results["models"][1]["name"] = "<script>alert('run$x^$')</script>"
    results["models"][1]["run_config"]["note"] = "</pre><script>bad()</script>"
    path, _ = build_report(tmp_path, results)
    text = path.read_text(encoding="utf-8")
    assert "<script" not in text
    assert "&lt;script&gt;alert(&#x27;run$x^$&#x27;)&lt;/script&gt;" in text


def test_html_report_renders_in_chromium(tmp_path: Path) -> None:
    # The names `make browser` accepts: Debian's package installs `chromium`, Ubuntu's
    # `chromium-browser`.
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.fail("chromium is not installed: run `make browser` (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    path, figures = build_report(tmp_path, make_results())
    messages: list[tuple[str, str]] = []
    errors: list[str] = []
    args = [
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
    ]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=args)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.on("console", lambda m: messages.append((m.type, m.text)))
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(path.as_uri())
            page.wait_for_load_state("load")
            images = page.evaluate(
                "Array.from(document.images).map(i => [i.complete, i.naturalWidth])"
            )
            title = page.title()
        finally:
            browser.close()
    assert not errors and not [m for m in messages if m[0] == "error"], (errors, messages)
    assert len(images) == len(figures)
    assert all(complete and width > 0 for complete, width in images), images
    assert "dbpedia" in title
