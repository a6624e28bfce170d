"""`python -m sppnet.cli` runs the `sppnet` command."""

import sys

from sppnet.cli import main

sys.exit(main())
