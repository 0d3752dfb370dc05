"""``python -m capture_export.cli``: the ``capture-export`` command."""

from __future__ import annotations

import sys

from . import main

sys.exit(main())
