"""The Python API: `import kdistill` stays light, `kdistill.distill` is the function whatever was
imported first, the README's example runs as written, and teacher_logits shares the CLI's
teacher-logit cache."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import CLASSES, REPO

import kdistill
from kdistill.errors import KdistillError

HEAVY = ("torch", "transformers", "datasets", "accelerate")


def python(code: str) -> str:
    """Run `code` in a fresh interpreter with this tree's src/ first; its stdout."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=True,
    )
    return out.stdout


def test_import_kdistill_and_help_load_no_heavy_library():
    code = (
        "import sys, contextlib, io\n"
        "import kdistill\n"
        "from kdistill import DistillConfig\n"
        "from kdistill.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "    main(['--help'])\n"
        "    main(['distill', '--help'])\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    assert python(code).strip() == "[]"


def test_the_public_names_resolve_and_unknown_ones_fail():
    for name in kdistill.__all__:
        assert getattr(kdistill, name) is not None, name
    assert kdistill.kd_loss is kdistill.api.kd_loss
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        kdistill.nope  # noqa: B018


@pytest.mark.parametrize("first", ["import kdistill.distill", "from kdistill.cli import main", ""])
def test_distill_is_the_function_whatever_was_imported_first(first):
    code = (
        f"{first}\n"
        "import importlib, inspect, kdistill\n"
        "from kdistill import distill\n"
        "module = importlib.import_module('kdistill.distill')\n"
        "print(inspect.isfunction(distill), distill is module.distill, kdistill.distill is distill)"
    )
    assert python(code).split() == ["True", "True", "True"]


def readme_example() -> str:
    """The first python block of the guide's "Python API" section (docs/guide.md)."""
    readme = (REPO / "docs" / "guide.md").read_text(encoding="utf-8")
    section = readme.split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```python\n(.*?)```", section, re.S)[:1]
    return block


def test_the_readme_example_runs(tmp_path, monkeypatch, trained_teacher, labelled_csv):
    """As written, in a project folder shaped like the demo's: data/dbpedia/ prepared (the toy
    classes under that name), the teacher in models/minilm-dbpedia, examples/students/."""
    from kdistill.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["prepare-data", "--dataset", str(labelled_csv), "--name", "dbpedia"]) == 0
    shutil.copytree(trained_teacher, tmp_path / "models" / "minilm-dbpedia")
    shutil.copytree(REPO / "examples" / "students", tmp_path / "examples" / "students")
    namespace: dict = {}
    exec(compile(readme_example(), "docs/guide.md", "exec"), namespace)  # noqa: S102
    run_dir = namespace["run_dir"]
    assert run_dir.parent.resolve() == tmp_path.resolve() / "outputs" / "student_soft_distill"
    assert (run_dir / "best_model" / "model.safetensors").is_file()
    assert namespace["label_names"] == CLASSES
    assert namespace["targets"].shape == (2, len(CLASSES))
    assert namespace["student_logits"].grad is not None
    assert torch.isfinite(namespace["loss"]) and namespace["loss"] > 0


def test_teacher_logits_reuse_the_cli_cache_and_equal_the_teacher(
    workdir, trained_teacher, tiny_models, monkeypatch
):
    """distill --teacher-cache disk saves the training rows' logits; teacher_logits, keyed the
    same way, finds them without running the teacher, and they are the teacher's logits."""
    from datasets import load_dataset

    from kdistill import load_teacher, teacher_logits
    from kdistill.cli import main
    from kdistill.teachers import cache as kcache

    argv = [
        "distill",
        "--dataset",
        "toy",
        "--teacher-model",
        str(trained_teacher),
        "--student-model",
        str(tiny_models["bert_student"]),
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--mixed-precision",
        "no",
        "--teacher-cache",
        "disk",
    ]
    assert main(argv) == 0
    texts = list(load_dataset("parquet", data_files="data/toy/train.parquet")["train"]["text"])
    teacher = load_teacher(str(trained_teacher), CLASSES)

    def no_teacher_pass(*args, **kwargs):
        raise AssertionError("the teacher ran: the CLI's cache entry was not found")

    with monkeypatch.context() as m:
        m.setattr(kcache, "compute_teacher_logits", no_teacher_pass)
        cached = teacher_logits(teacher, texts, cache="auto")
    fresh = teacher_logits(teacher, texts, cache="memory", batch_size=5)
    assert cached.shape == (len(texts), len(CLASSES))
    assert torch.allclose(cached, fresh, atol=1e-5)
    # A different max_length is a different key: computed, not taken from the CLI's entry.
    with monkeypatch.context() as m, pytest.raises(AssertionError, match="the teacher ran"):
        m.setattr(kcache, "compute_teacher_logits", no_teacher_pass)
        teacher_logits(teacher, texts, max_length=64, cache="auto")


def test_bad_arguments_are_one_line_errors(tiny_models):
    from kdistill import load_teacher, teacher_logits

    with pytest.raises(KdistillError, match="mode='zero-shot': pass one of auto, classifier"):
        load_teacher(str(tiny_models["bert_teacher"]), CLASSES, mode="zero-shot")
    with pytest.raises(KdistillError, match="--few-shot must be >= 0"):
        load_teacher(str(tiny_models["qwen_lm"]), CLASSES, few_shot=-1)
    with pytest.raises(KdistillError, match="no such folder"):
        load_teacher("models/absent", CLASSES)
    teacher = load_teacher(str(tiny_models["bert_teacher"]), CLASSES)
    with pytest.raises(KdistillError, match="cache='sometimes'"):
        teacher_logits(teacher, ["a text"], cache="sometimes")
    assert teacher_logits(teacher, []).shape == (0, len(CLASSES))
    # Its columns follow label_names (the teacher's head is reversed).
    ids = teacher.tokenizer(["a species of bird"], return_tensors="pt")
    raw = teacher.model(**ids).logits
    got = teacher_logits(teacher, ["a species of bird"], cache="memory")
    assert torch.allclose(got, raw.flip(-1), atol=1e-5)
