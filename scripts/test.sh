#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite. Extra arguments go to pytest.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$here/scripts/setup.sh"
cd "$here"
# tests set every AWS_* variable they use; drop the developer's so nothing leaks in
for v in $(env | grep -o '^AWS_[A-Z_]*' || true); do unset "$v"; done
exec "${VENV:-$here/.venv}/bin/python" -m pytest -p no:cacheprovider "$@"
