"""The committed output of a bench: bench/results/<script>.txt, the source of the docs' tables.

Its first line is `# python bench/<script>.py <flags>` (the command that wrote it), its second
the date and the machine; then what the script adds (markdown tables, notes). It is written to
a temporary file and renamed, so a bench that dies leaves the last complete file in place.
"""

from __future__ import annotations

import os
import platform
import shlex
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def command_line() -> str:
    """This process's command as it is typed from the repository root."""
    return shlex.join(["python", f"bench/{Path(sys.argv[0]).name}", *sys.argv[1:]])


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_line() -> str:
    import torch

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (
        f"# {time.strftime('%Y-%m-%d %H:%M %Z')}, {cpu_model()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"load average {load} when written"
    )


def markdown_table(columns: list[str], rows: list[list[str]]) -> list[str]:
    """A markdown table, cells as given, so docs can copy rows verbatim."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def short_e(x: float) -> str:
    """2.8e-05 -> 2.8e-5, the docs' way of writing a small number; 0 -> 0."""
    if x == 0:
        return "0"
    mantissa, exponent = f"{x:.1e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def write_results(body: list[str], name: str | None = None, command: str | None = None) -> Path:
    """Write bench/results/<name, default this script's>.txt (command line, machine line,
    `body`), atomically, and print it."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name or Path(sys.argv[0]).stem}.txt"
    text = "\n".join([f"# {command or command_line()}", machine_line(), *body]) + "\n"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    print(f"\n{text}wrote {path.relative_to(RESULTS.parent.parent)}", flush=True)
    return path
