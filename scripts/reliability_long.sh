#!/usr/bin/env bash
# The long versions of the reliability suites (docs/reliability.md), one after the other:
#   model test (local and S3), crash test (many SIGKILLs, local and S3), concurrency (minutes, local
#   and S3), storage faults (repeated). Numbers are printed at the end and kept in $OUT (a directory).
#   Sizes: MODEL_EXAMPLES MODEL_STEPS MODEL_EXAMPLES_S3 KILLS KILLS_S3 POINT_ROUNDS CONCURRENCY_S FAULT_RUNS
#   CHURN_S CHURN_RUNS. ONLY="crash churn" (any of: model crash concurrency faults churn) runs just those.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
for v in $(env | grep -o '^AWS_[A-Z_]*' || true); do unset "$v"; done
py="${VENV:-$here/.venv}/bin/python"
OUT="${OUT:-$here/reliability-long}"
mkdir -p "$OUT"
run() { echo "== $*"; "$py" -m pytest -p no:cacheprovider -q -s -o timeout=0 "$@"; }
want() { [ -z "${ONLY:-}" ] || [[ " $ONLY " == *" $1 "* ]]; }

if want model; then
LAMFS_MODEL_STATS="$OUT/model-local.json" bash scripts/model_test_long.sh local "${MODEL_EXAMPLES:-500}" "${MODEL_STEPS:-60}" \
    2>&1 | tee "$OUT/model-local.log" | grep -E "model test|passed|failed"
LAMFS_MODEL_STATS="$OUT/model-s3.json" bash scripts/model_test_long.sh s3 "${MODEL_EXAMPLES_S3:-100}" "${MODEL_STEPS:-60}" \
    2>&1 | tee "$OUT/model-s3.log" | grep -E "model test|passed|failed"
fi
if want crash; then
rm -f "$OUT/crash.jsonl"
LAMFS_CRASH_KILLS="${KILLS:-100}" LAMFS_CRASH_KILLS_S3="${KILLS_S3:-30}" LAMFS_CRASH_STATS="$OUT/crash.jsonl" \
    run tests/test_crash.py -k sigkill 2>&1 | tee "$OUT/crash.log" | grep -E "crash test|passed|failed"
# every injected point (each round kills the daemon once per point, on both roots)
for i in $(seq "${POINT_ROUNDS:-5}"); do
    run tests/test_crash.py -k "every_step or eio" 2>&1 | tee -a "$OUT/crash-points.log" | grep -E "passed|failed"
done
fi
if want concurrency; then
LAMFS_CONCURRENCY_SECONDS="${CONCURRENCY_S:-120}" run tests/test_concurrency.py 2>&1 | tee "$OUT/concurrency.log" \
    | grep -E "concurrency \(|passed|failed"
fi
if want faults; then
rm -f "$OUT/faults.log"
for i in $(seq "${FAULT_RUNS:-10}"); do
    run tests/test_faults_more.py tests/test_faults.py 2>&1 | tee -a "$OUT/faults.log" | grep -E "faults injected|passed|failed"
done
fi
if want churn; then
for i in $(seq "${CHURN_RUNS:-5}"); do
    LAMFS_CHURN_S="${CHURN_S:-60}" run tests/test_two_mounts.py -k churn 2>&1 | tee -a "$OUT/churn.log" | grep -E "passed|failed"
done
fi
echo "== results in $OUT"
