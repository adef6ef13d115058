"""The offline fixtures are the same in every test session: a seeded training test then trains the
same model each time, so its accuracy cannot pass in one session and land at chance in the next."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent

BUILD = """
import hashlib, sys, tempfile
from pathlib import Path
sys.path.insert(0, {tests!r})
import conftest
for build in (conftest.build_wordpiece_tokenizer, conftest.build_bpe_tokenizer):
    folder = Path(tempfile.mkdtemp())
    build(folder)
    print(hashlib.sha256((folder / "tokenizer.json").read_bytes()).hexdigest())
"""


def built_in_a_new_process() -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", BUILD.format(tests=str(TESTS))],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return out.stdout.split()


def test_the_toy_tokenizers_are_the_same_in_every_process():
    """Each process hashes its strings with a new random key (Python's and Rust's), which a
    trained vocabulary's tie-breaking used to follow."""
    first, second = built_in_a_new_process(), built_in_a_new_process()
    assert len(first) == 2
    assert first == second
