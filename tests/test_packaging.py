"""The wheel a newcomer installs: `python -m build` makes it, it carries the schemas and the
examples the commands read, and installed into a fresh venv it runs the demo's first steps with
no checkout around (kdistill imported from the venv, not from src/)."""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import REPO

pytestmark = pytest.mark.slow

# What the wheel must carry besides code: read by the commands or by the user.
DATA_FILES = (
    "kdistill/schemas/comparison_results.schema.json",
    "kdistill/examples/students/bert-tiny/config.json",
    "kdistill/examples/accelerate/ddp.yaml",
)


def run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: int = 600) -> str:
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{cmd} failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}"
    return out.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """Built from a copy of the tree (the build writes build/ and *.egg-info beside its
    sources), without build isolation: setuptools comes from this environment, not the net."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (REPO / name).is_file():
            shutil.copy2(REPO / name, source / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for folder in ("src", "examples"):
        shutil.copytree(REPO / folder, source / folder, ignore=ignore)
    build = [
        sys.executable,
        "-m",
        "build",
        "--wheel",
        "--no-isolation",
        "--outdir",
        str(root / "dist"),
        str(source),
    ]
    run(build, root, os.environ.copy())
    (built,) = (root / "dist").glob("kdistill-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(tmp_path_factory, wheel) -> tuple[Path, dict[str, str]]:
    """A fresh venv holding only the wheel (--no-deps, --no-index: a plain install would pull a
    CUDA torch). Its dependencies come from this environment's site-packages through a .pth
    line, which puts them on sys.path after the venv's own site-packages (and does not run
    their .pth files, so an editable kdistill there stays out of sight)."""
    root = tmp_path_factory.mktemp("venv")
    run(
        [sys.executable, "-m", "venv", "--without-pip", str(root / "venv")], root, os.environ.copy()
    )
    python = root / "venv" / "bin" / "python"
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--no-deps",
            "--no-index",
            "--quiet",
            str(wheel),
        ],
        root,
        os.environ.copy(),
    )
    purelib = run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        root,
        os.environ.copy(),
    ).strip()
    ours = [p for p in site.getsitepackages() if Path(p).is_dir()]
    (Path(purelib) / "kdistill_test_deps.pth").write_text("\n".join(ours) + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return root / "venv", env


def test_the_wheel_carries_the_data_files(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = [f for f in DATA_FILES if f not in names]
    assert not missing, missing
    assert not any(n.startswith(("tests/", "bench/")) for n in names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "kdistill = kdistill.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_the_installed_wheel_runs_the_demos_first_steps(venv, tmp_path, dbpedia_csv, minilm_path):
    env_dir, env = venv
    python, kd = str(env_dir / "bin" / "python"), str(env_dir / "bin" / "kdistill")
    where = run([python, "-c", "import kdistill, sys; print(kdistill.__file__)"], tmp_path, env)
    assert Path(where.strip()).is_relative_to(env_dir), where  # the wheel's, not src/
    assert "distill" in run([kd, "--help"], tmp_path, env)

    # The demo's step 1 on the DBpedia sample, then a tiny distill with the demo's student
    # architecture, found inside the installed package (no examples/ folder here).
    run(
        [
            kd,
            "prepare-data",
            "--dataset",
            str(dbpedia_csv),
            "--name",
            "demo",
            "--validation-split",
            "0.2",
            "--test-split",
            "0.1",
        ],
        tmp_path,
        env,
    )
    info = json.loads((tmp_path / "data" / "demo" / "dataset_info.json").read_text())
    assert len(info["label_names"]) == 14
    assert not (tmp_path / "examples").exists()
    run_dir = Path(
        run(
            [
                kd,
                "distill",
                "--dataset",
                "demo",
                "--teacher-model",
                str(minilm_path),
                "--allow-untrained-teacher",
                "--allow-weak-teacher",
                "--student-model",
                "examples/students/bert-tiny",
                "--student-tokenizer",
                str(minilm_path),
                "--epochs",
                "1",
                "--batch-size",
                "16",
                "--max-length",
                "32",
                "--max-train-samples",
                "64",
                "--max-val-samples",
                "28",
                "--mixed-precision",
                "no",
                "--trim-vocab",  # the full 30,522-row table: bert-tiny's shape, counted below
                "off",
            ],
            tmp_path,
            env,
        )
        .strip()
        .splitlines()[-1]
    )
    run_dir = run_dir if run_dir.is_absolute() else tmp_path / run_dir
    config = json.loads((run_dir / "config.json").read_text())
    assert config["student"]["parameters"] > 4_000_000  # bert-tiny's shape, from the wheel
    prediction = run(
        [kd, "predict", "--model", str(run_dir), "--text", "An album by a band."], tmp_path, env
    )
    assert any(name in prediction for name in info["label_names"])
