"""``python -m eval.parity`` (same as ``samhq parity``)."""

from eval.parity.cli import main

raise SystemExit(main())
