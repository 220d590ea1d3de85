#!/usr/bin/env bash
# Sets up the virtualenv with the test extras (first run only), then runs ruff and the test suite.
# The tests read models and images from ../shared (or $LABELLER_SHARED_DIR); nothing touches the network.
set -euo pipefail
cd "$(dirname "$0")"

VENV=${VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"
if ! python -c "import beam_pipeline, pytest, tensorflow_hub, skimage, duckdb, build, apache_beam.runners.dataflow, pyiceberg, hypothesis, openvino, ai_edge_litert, moto, gcp_storage_emulator, s3fs" 2>/dev/null; then
  pip install -q --upgrade pip
  pip install -q -e ".[test]"
fi
ruff check .
python -m pytest "$@"
