"""`python -m agent` is the `slipstream` command (the lab starts agents this way)."""

import sys

from agent.cli import main

sys.exit(main())
