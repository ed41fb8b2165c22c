"""``python -m eval.parity`` (same as ``samhq parity``)."""

import sys

from eval.parity.cli import main

sys.exit(main())
