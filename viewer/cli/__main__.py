"""``python -m radreview.viewer.cli``: the same as the ``radreview`` command."""

import sys

from . import main

sys.exit(main())
