"""``python -m demo`` from a checkout (``make demo``)."""

import sys

from .steps import main

sys.exit(main())
