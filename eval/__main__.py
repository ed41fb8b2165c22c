"""``python -m eval``: the same as ``samhq-eval``."""

import sys

from eval.cli import main

sys.exit(main())
