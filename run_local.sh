#!/usr/bin/env bash
# Sets up a virtualenv (first run only), labels sample photos on the local runner into ./output/, prints a summary.
#   OUTPUT=...  the folder to write into instead of ./output/ (its labels/ subfolder is replaced on each run)
#   INPUT=...   folder, glob or manifest to label (default: sample photos shipped by scikit-image and matplotlib)
#   MODEL=...   --model (default: ../shared's float SavedModel when present, else the job's default, hf://Dimitre/mobilenet_v3_small pinned to a commit)
#   LABELS=...  --labels (default: ../shared's ImageNetLabels.txt when present, else TensorFlow's published file)
#   Extra arguments are passed to the job, e.g. ./run_local.sh --top-k 3
set -euo pipefail
cd "$(dirname "$0")"

VENV=${VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"
if ! python -c "import beam_pipeline, skimage, matplotlib, duckdb" 2>/dev/null; then
  echo "Installing beam-image-labeller into $VENV (a few minutes, once)..."
  if command -v uv >/dev/null 2>&1; then
    uv pip install -q --python "$VENV/bin/python" -e ".[samples,report]"
  else
    pip install -q --upgrade pip
    pip install -q -e ".[samples,report]"
  fi
fi

SHARED=${LABELLER_SHARED_DIR:-../shared}
OUTPUT=${OUTPUT:-output}
rm -rf "$OUTPUT/labels"
if [ -z "${INPUT:-}" ]; then
  INPUT="$OUTPUT/sample-images"
  python scripts/sample_images.py "$INPUT" >/dev/null
fi
args=(--input "$INPUT" --output "$OUTPUT/labels/labels")
if [ -n "${MODEL:-}" ]; then
  args+=(--model "$MODEL")
elif [ -d "$SHARED/models/mobilenet_v3_small_100_224_float" ]; then
  args+=(--model "$SHARED/models/mobilenet_v3_small_100_224_float")
fi
if [ -n "${LABELS:-}" ]; then
  args+=(--labels "$LABELS")
elif [ -f "$SHARED/labels/ImageNetLabels.txt" ]; then
  args+=(--labels "$SHARED/labels/ImageNetLabels.txt")
fi

echo "beam-image-labeller ${args[*]} $*"
python -m beam_pipeline "${args[@]}" "$@"
echo
echo "First rows of $OUTPUT/labels/:"
python scripts/show_rows.py "$OUTPUT/labels" 10
python -m beam_pipeline.report "$OUTPUT/labels/labels" --html "$OUTPUT/report.html" >/dev/null
echo
echo "Review report: $OUTPUT/report.html"
