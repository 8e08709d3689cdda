"""``python -m autoseg``: the same as the ``autoseg`` command."""

import sys

from autoseg.cli.main import main

sys.exit(main())
