#!/usr/bin/env bash
# The whole set-up, then ruff and the test suite; safe to run again (each step is skipped when already done):
#   1. the system tools some tests run (Debian packages through apt, when missing): headless Chromium for the
#      report in a browser; unshare/nsenter (util-linux) and ip (iproute2) for the Dataflow worker test's network
#      namespace;
#   2. uv (installed with pip when not on PATH), then .venv with the test extras, built by uv (seconds; pip takes
#      over 10 minutes to resolve them);
#   3. the two Dataflow worker venvs tests/test_dataflow.py uses (scripts/worker_env.py; cached under .cache/).
# Then pytest over the machine's cores (pytest-xdist). Extra arguments go to pytest, e.g. ./run_tests.sh -m "not slow"
# The tests read models and images from ../shared (or $LABELLER_SHARED_DIR); nothing touches the network.
set -euo pipefail
cd "$(dirname "$0")"

missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
{ command -v unshare && command -v nsenter; } >/dev/null 2>&1 || missing+=(util-linux)
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
if [ ${#missing[@]} -gt 0 ]; then
  echo "Installing ${missing[*]} with apt-get..."
  sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

VENV=${VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"
if ! command -v uv >/dev/null 2>&1; then
  pip install -q uv  # into the venv: its bin is on PATH from here on
fi
if ! python -c "import beam_pipeline, pytest, xdist, pytest_timeout, tensorflow_hub, skimage, duckdb, build, apache_beam.runners.dataflow, pyiceberg, hypothesis, openvino, ai_edge_litert, moto, gcp_storage_emulator, s3fs" 2>/dev/null; then
  echo "Installing the test extras into $VENV with uv..."
  uv pip install -q --python "$VENV/bin/python" --compile-bytecode -e ".[test]"
fi
for kind in setup-file container; do
  python scripts/worker_env.py venv "$kind" >/dev/null
done

ruff check .
python -m pytest -n "${PYTEST_WORKERS:-auto}" "$@"
