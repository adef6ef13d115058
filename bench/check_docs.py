"""Every figure in README.md and docs/ must be copied from a committed bench/results/ file.

`make check-docs` (part of `make test`) runs this. Two rules, because a figure that drifts from
the output that measured it is worse than no figure:

1. A markdown table that holds a number sits directly under a line naming where its figures come
   from, `<!-- results: bench/results/NAME.txt -->` (several files: comma-separated). Every
   number in the table, header and row labels included, must occur verbatim in one of those
   files, and each file must be tracked by git and begin with a `#` line naming the command
   that wrote it. A table whose numbers are no measurement (exit statuses, arithmetic from a
   model's size) says so instead, on the line above it: `<!-- not measured: WHY -->`.
2. In prose, a decimal figure given as a percentage or a ratio (`94.2%`, `2.60x`) must occur in
   a results file that the same document names. Whole numbers in prose (`10%` of the rows, `95%`
   intervals) are settings, not measurements, and are left alone. A line that quotes another
   work's published figure says so with `<!-- cited -->` on that line.

Code blocks are skipped: they show commands and layouts, not results.

Usage: python bench/check_docs.py [FILE ...]   (default: README.md and docs/*.md)
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SOURCE = re.compile(r"<!--\s*results:\s*(?P<files>[^>]*?)\s*-->")
# A number as a reader sees it: 1,000 and 1000 are the same figure, a sign is not part of it.
NUMBER = re.compile(r"\d[\d,]*(?:\.\d+)?")
CITED = "<!-- cited -->"
NOT_MEASURED = re.compile(r"<!--\s*not measured:\s*\S[^>]*-->")
# A measured figure in prose: a decimal percentage or ratio.
PROSE_FIGURE = re.compile(r"(?<![\w.])\d[\d,]*\.\d+(?=\s?%|x\b)")


@dataclass
class Problem:
    where: str
    what: str

    def __str__(self) -> str:
        return f"{self.where}: {self.what}"


def numbers(text: str) -> list[str]:
    """Every number in `text`, thousands separators dropped (`1,000` -> `1000`)."""
    return [m.group().replace(",", "") for m in NUMBER.finditer(text)]


def tracked(path: Path) -> bool:
    """Is `path` committed (or staged)? An untracked results file is not a published source."""
    out = subprocess.run(
        ["git", "ls-files", "--error-unmatch", str(path)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    return out.returncode == 0


def results_numbers(name: str, doc: str, line: int, problems: list[Problem]) -> set[str] | None:
    """The numbers a results file holds, or None (with a problem) when it is not a valid source."""
    path = REPO / name
    where = f"{doc}:{line}"
    if not name.startswith("bench/results/"):
        problems.append(Problem(where, f"{name} is not under bench/results/"))
        return None
    if not path.is_file():
        problems.append(Problem(where, f"{name} does not exist"))
        return None
    if not tracked(path):
        problems.append(Problem(where, f"{name} is not committed"))
        return None
    text = path.read_text(encoding="utf-8")
    first = text.splitlines()[0] if text else ""
    if not first.startswith("#"):
        problems.append(
            Problem(where, f"{name} does not begin with a '#' line naming the command that made it")
        )
    return set(numbers(text))


def blocks(lines: list[str]) -> list[tuple[int, list[str]]]:
    """The markdown tables outside code fences: (index of the first line, the table's lines)."""
    tables: list[tuple[int, list[str]]] = []
    fenced = False
    i = 0
    while i < len(lines):
        if lines[i].lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced and lines[i].lstrip().startswith("|"):
            start = i
            while i < len(lines) and lines[i].lstrip().startswith("|"):
                i += 1
            tables.append((start, lines[start:i]))
            continue
        i += 1
    return tables


def line_above(lines: list[str], start: int) -> str:
    """The nearest non-blank line above a table."""
    j = start - 1
    while j >= 0 and not lines[j].strip():
        j -= 1
    return lines[j] if j >= 0 else ""


def source_above(lines: list[str], start: int) -> list[str] | None:
    """The results files named on the nearest non-blank line above a table, if it names any."""
    match = SOURCE.search(line_above(lines, start))
    if not match:
        return None
    return [f.strip() for f in match.group("files").split(",") if f.strip()]


def prose(lines: list[str]) -> list[tuple[int, str]]:
    """Lines outside code fences, tables and HTML comments, with their line numbers."""
    out, fenced = [], False
    for n, line in enumerate(lines, 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        skip = SOURCE.search(line) or NOT_MEASURED.search(line) or CITED in line
        if fenced or line.lstrip().startswith("|") or skip:
            continue
        out.append((n, line))
    return out


def check_file(path: Path) -> list[Problem]:
    doc = str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    problems: list[Problem] = []
    named: set[str] = set()
    for start, table in blocks(lines):
        figures = [
            (k, n)
            for k, row in enumerate(table)
            if not re.fullmatch(r"[\s|:\-]*", row)
            for n in numbers(row)
        ]
        if not figures or NOT_MEASURED.search(line_above(lines, start)):
            continue
        files = source_above(lines, start)
        if files is None:
            problems.append(
                Problem(
                    f"{doc}:{start + 1}",
                    "a table with figures names no results file: put "
                    "<!-- results: bench/results/NAME.txt --> on the line above it",
                )
            )
            continue
        known: set[str] = set()
        valid = True
        for name in files:
            got = results_numbers(name, doc, start, problems)
            if got is None:
                valid = False
            else:
                known |= got
                named.add(name)
        if not valid:
            continue
        for k, n in figures:
            if n not in known:
                problems.append(
                    Problem(
                        f"{doc}:{start + k + 1}",
                        f"{n} is in no line of {', '.join(files)}: {table[k].strip()[:100]}",
                    )
                )
    documented = set()
    for name in named:
        documented |= set(numbers((REPO / name).read_text(encoding="utf-8")))
    for n, line in prose(lines):
        for m in PROSE_FIGURE.finditer(line):
            figure = m.group().replace(",", "")
            if figure not in documented:
                problems.append(
                    Problem(
                        f"{doc}:{n}",
                        f"the figure {m.group()} is in none of the results files this document "
                        "names (a table's <!-- results: ... --> line)",
                    )
                )
    return problems


def default_files() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def main(argv: list[str]) -> int:
    files = [Path(a).resolve() for a in argv] or default_files()
    problems = [p for f in files for p in check_file(f)]
    for p in problems:
        print(p)
    if problems:
        print(f"check-docs: {len(problems)} figure(s) differ from their results files")
        return 1
    print(f"check-docs: every figure in {len(files)} file(s) matches its results file")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
