"""``python -m captum_iba COMMAND ...`` is ``captum-iba COMMAND ...`` (and ``torchrun -m captum_iba attribute ...``)."""

import sys

from .app.cli import main

sys.exit(main())
