#!/usr/bin/env bash
# Create .venv with samhq-jax and the PyTorch references used by the tests.
# torch is pinned (never left to a resolver); a second, regressed transformers release goes into
# .hf-regressed/ for the test that pins transformers' 4.54+ mask bug.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
.venv/bin/python -m pip install -q -e ".[test,hub]"
# the ONNX converter without its declared orbax-checkpoint<0.11.37 pin (pyproject.toml, extra "export")
.venv/bin/python -m pip install -q --no-deps "jax2onnx==0.17.1"
.venv/bin/python -m pip install -q --target .hf-regressed --no-deps --upgrade "transformers==4.57.3" "tokenizers==0.22.1"
# node runs the serve page's JavaScript in tests/test_serve.py, chromium shows the page to Playwright
# in tests/test_serve_browser.py (Debian's packages; apt where allowed; Playwright cannot download
# its own browsers here)
missing=""
command -v node >/dev/null || missing="$missing nodejs"
command -v chromium >/dev/null || [ -n "${SAMHQ_CHROMIUM:-}" ] || missing="$missing chromium"
if [ -n "$missing" ] && command -v apt-get >/dev/null; then
  # shellcheck disable=SC2086  # one word per package
  { apt-get update -q && apt-get install -y -q $missing; } >/dev/null 2>&1 \
    || echo "setup.sh: could not install$missing (apt)" >&2
fi
