"""``python -m SeedImplantPlannerLib.cli``: the ``seedplan`` command."""

import sys

from .main import main

sys.exit(main())
