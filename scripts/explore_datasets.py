#!/usr/bin/env python
"""Step 2 of the seed workflow: load, split, explore and save a data set under data/.

A thin wrapper over `kdistill prepare-data` with the seed's flags; `--help` lists them all.
"""

import sys
from pathlib import Path

try:
    from kdistill.cli import main
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
    from kdistill.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], prog=Path(__file__).name, command="prepare-data"))
