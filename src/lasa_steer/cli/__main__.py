"""``python -m lasa_steer.cli``: the ``lasa`` command."""

import sys

from .main import main

sys.exit(main())
