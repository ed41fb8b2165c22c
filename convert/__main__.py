"""``python -m convert SRC DST`` (same as ``samhq-convert``)."""

import sys

from convert.cli import main

sys.exit(main())
