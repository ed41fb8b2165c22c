#!/usr/bin/env bash
# The device suite (eval/bench/device_suite.py): parity, encoder / decoder / segment-everything speed,
# the train step and the attention paths, measured in one call on a lent GPU; the table is printed
# last and written with the JSON and the log to $OUT (or --output DIR).
#   bash scripts/device_suite.sh            # on the GPU machine (--budget: 540 s by default)
#   bash scripts/device_suite.sh --smoke    # CPU, tiny presets (a few minutes; CI runs it)
# Python: $PYTHON, else .venv/bin/python, else python3 (the GPU machine's, which has JAX with CUDA,
# PyTorch, flax and optax). Wheels in .whl/ (segment-anything-hq, which that machine lacks) are
# installed into a scratch folder first; nothing is downloaded.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
if compgen -G ".whl/*.whl" >/dev/null; then
  site=$(mktemp -d /tmp/samhq-site.XXXXXX)
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" .whl/*.whl
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" -m eval.bench.device_suite "$@"
