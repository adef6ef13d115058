"""The docs check: a published figure that differs from its results file fails `make test`."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def load_checker(repo: Path):
    """bench/check_docs.py, bound to `repo` as its root (a scratch git repo in these tests)."""
    spec = importlib.util.spec_from_file_location("check_docs", REPO / "bench" / "check_docs.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["check_docs"] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    module.REPO = repo
    return module


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    """A git repo with one committed results file."""
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    results = tmp_path / "bench" / "results"
    results.mkdir(parents=True)
    (results / "demo.txt").write_text(
        "# make demo DATASET=x.csv\n"
        "| model | test accuracy [95% CI] | speed-up |\n"
        "| teacher | 94.0% [91.8, 96.0] | 1.0x |\n"
        "| student, 2 of 6 layers | 94.2% [92.2, 96.2] | 3.4x |\n"
        "rows: 1,000 test\n"
    )
    subprocess.run(["git", "-C", str(tmp_path), "add", "bench"], check=True)
    return tmp_path


def write(repo: Path, text: str) -> Path:
    doc = repo / "README.md"
    doc.write_text(text)
    return doc


TABLE = (
    "| model | test accuracy [95% CI] | speed-up |\n"
    "|---|---|---|\n"
    "| teacher | 94.0% [91.8, 96.0] | 1.0x |\n"
    "| student, 2 of 6 layers | {acc} [92.2, 96.2] | 3.4x |\n"
)


def test_a_table_copied_from_its_results_file_passes(scratch: Path) -> None:
    checker = load_checker(scratch)
    doc = write(
        scratch,
        "<!-- results: bench/results/demo.txt -->\n" + TABLE.format(acc="94.2%") + "\n"
        "The student reaches 94.2% on 1000 rows.\n",
    )
    assert checker.check_file(doc) == []


def test_a_figure_that_drifted_from_its_results_file_fails(scratch: Path) -> None:
    checker = load_checker(scratch)
    doc = write(scratch, "<!-- results: bench/results/demo.txt -->\n" + TABLE.format(acc="95.0%"))
    problems = [str(p) for p in checker.check_file(doc)]
    assert len(problems) == 1
    assert "95.0" in problems[0] and "README.md:5" in problems[0]


def test_a_table_with_figures_must_name_its_results_file(scratch: Path) -> None:
    checker = load_checker(scratch)
    doc = write(scratch, TABLE.format(acc="94.2%"))
    (problem,) = checker.check_file(doc)
    assert "names no results file" in str(problem)


def test_a_results_file_must_be_committed_and_name_its_command(scratch: Path) -> None:
    checker = load_checker(scratch)
    (scratch / "bench" / "results" / "loose.txt").write_text("94.2 92.2 96.2 94.0 91.8 96.0\n")
    doc = write(scratch, "<!-- results: bench/results/loose.txt -->\n" + TABLE.format(acc="94.2%"))
    assert any("not committed" in str(p) for p in checker.check_file(doc))
    subprocess.run(["git", "-C", str(scratch), "add", "bench"], check=True)
    assert any("'#' line" in str(p) for p in checker.check_file(doc))


def test_a_decimal_figure_in_prose_must_come_from_a_named_results_file(scratch: Path) -> None:
    checker = load_checker(scratch)
    doc = write(
        scratch,
        "<!-- results: bench/results/demo.txt -->\n" + TABLE.format(acc="94.2%") + "\n"
        "Throughput is 4.0x the seed loop; 10% of the rows keep labels, 95% intervals.\n"
        "SSTuning reaches 84.7% on DBpedia. <!-- cited -->\n",
    )
    (problem,) = checker.check_file(doc)
    assert "4.0" in str(problem) and "README.md:7" in str(problem)


def test_code_blocks_are_not_results(scratch: Path) -> None:
    checker = load_checker(scratch)
    doc = write(scratch, "```\n| 12.5% | 3.3x |\nspeed 9.9x\n```\n")
    assert checker.check_file(doc) == []


def test_the_published_docs_match_their_results_files() -> None:
    out = subprocess.run(
        [sys.executable, str(REPO / "bench" / "check_docs.py")],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout[-3000:]


def test_a_table_that_measures_nothing_says_so(scratch: Path) -> None:
    checker = load_checker(scratch)
    table = "| exit status | meaning |\n|---|---|\n| 2 | bad input |\n| 130 | SIGINT |\n"
    assert len(checker.check_file(write(scratch, table))) == 1
    doc = write(scratch, "<!-- not measured: exit statuses -->\n" + table)
    assert checker.check_file(doc) == []
