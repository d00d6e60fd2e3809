"""`python -m pyprune_fast ...`: the command line of `pyprune_fast.cli`."""

import sys

from .cli import main

sys.exit(main())
