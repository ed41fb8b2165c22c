"""``python -m eval.bench`` (same as ``samhq-bench``)."""

import sys

from eval.bench.speed import main

sys.exit(main())
