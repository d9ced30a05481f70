#!/usr/bin/env bash
# The model-based test (tests/test_model.py), long: many more examples and steps than CI runs.
#   scripts/model_test_long.sh [local|s3] [examples] [steps]      (defaults: local 500 60)
# Statistics (examples, operations per kind) go to $LAMFS_MODEL_STATS (default: model-long-<root>.json).
# Failing examples are kept in .hypothesis/ and replayed first on the next run.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
for v in $(env | grep -o '^AWS_[A-Z_]*' || true); do unset "$v"; done
root="${1:-local}"
export LAMFS_MODEL_PROFILE=lamfs-long LAMFS_MODEL_EXAMPLES="${2:-500}" LAMFS_MODEL_STEPS="${3:-60}"
export LAMFS_MODEL_STATS="${LAMFS_MODEL_STATS:-$here/model-long-$root.json}"
if [ "$root" = s3 ]; then export LAMFS_MODEL_STORAGE=s3; fi
exec "${VENV:-$here/.venv}/bin/python" -m pytest -p no:cacheprovider -q -s -o timeout=0 \
    tests/test_model.py -k plain_directory
