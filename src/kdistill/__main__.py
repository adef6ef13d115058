"""`python -m kdistill` and `accelerate launch -m kdistill` entry point."""

import sys

from kdistill.cli import main

sys.exit(main())
