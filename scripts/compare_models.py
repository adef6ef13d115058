#!/usr/bin/env python
"""Step 4 of the seed workflow: compare the teacher and its students on a held-out split.

A thin wrapper over `kdistill compare` with the seed's flags (--teacher-model, --student-model,
--dataset); `--help` lists them all.
"""

import sys
from pathlib import Path

try:
    from kdistill.cli import main
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
    from kdistill.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], prog=Path(__file__).name, command="compare"))
