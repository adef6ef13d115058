"""The no-label recipe: a run with no labelled training rows trains with the values measured to
let the student reach its teacher, wherever the flags are left at their defaults."""

import dataclasses
import json
from pathlib import Path

from kdistill.cli import main
from kdistill.config import NO_LABEL_RECIPE, DistillConfig, no_label_recipe


def test_the_rule_applies_to_defaults_only_and_only_without_labels():
    base = DistillConfig(unlabeled_data="data/x/unlabeled.parquet")
    resolved, changes = no_label_recipe(base, labeled_rows=0)
    assert {k: getattr(resolved, k) for k in NO_LABEL_RECIPE} == NO_LABEL_RECIPE
    assert changes["temperature"] == (3.0, NO_LABEL_RECIPE["temperature"])
    # A flag given with another value wins; the rest still follow the recipe.
    given = dataclasses.replace(base, temperature=2.0)
    resolved, changes = no_label_recipe(given, labeled_rows=0)
    assert resolved.temperature == 2.0 and "temperature" not in changes
    assert resolved.epochs == NO_LABEL_RECIPE["epochs"]
    # Labelled rows, the recipe off, or no transfer set: the config as given.
    for config, labeled in (
        (base, 14),
        (dataclasses.replace(base, no_label_recipe="off"), 0),
        (DistillConfig(), 0),
    ):
        assert no_label_recipe(config, labeled) == (config, {})


def test_distill_records_the_recipe_it_trained_with(
    tmp_path, monkeypatch, labelled_csv, tiny_models
):
    monkeypatch.chdir(tmp_path)
    for name, fraction in (("toy0", "0"), ("toy", "0.25")):
        argv = ["prepare-data", "--dataset", str(labelled_csv), "--name", name]
        assert main([*argv, "--labeled-fraction", fraction]) == 0

    def distill(dataset: str, *extra: str) -> dict:
        out = tmp_path / "runs" / f"{dataset}{len(extra)}"
        argv = [
            "distill",
            "--dataset",
            dataset,
            "--teacher-model",
            str(tiny_models["bert_teacher"]),
            "--student-model",
            str(tiny_models["bert_student"]),
            "--batch-size",
            "16",
            "--epochs",
            "1",  # given: the recipe's epochs do not replace it
            "--mixed-precision",
            "no",
            "--allow-weak-teacher",
            "--unlabeled-data",
            f"data/{dataset}/unlabeled.parquet",
            "--output-dir",
            str(out),
            *extra,
        ]
        assert main(argv) == 0
        (run,) = Path(out).iterdir()
        return json.loads((run / "config.json").read_text())

    no_labels = distill("toy0")  # no --alpha: the recipe's 1, which a run without labels needs
    assert no_labels["alpha"] == 1.0
    assert no_labels["temperature"] == NO_LABEL_RECIPE["temperature"]
    assert no_labels["lr_scheduler"] == NO_LABEL_RECIPE["lr_scheduler"]
    assert no_labels["epochs"] == 1
    off = distill("toy0", "--no-label-recipe", "off", "--alpha", "1")
    assert off["temperature"] == 3.0
    assert distill("toy")["temperature"] == 3.0  # labelled rows: the flags as given
