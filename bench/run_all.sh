#!/usr/bin/env bash
# Run every benchmark in turn; each prints its table and writes bench/results/<name>.json.
# Usage: bash bench/run_all.sh [--quick] [--redis-url URL] [--database-url URL] [--out DIR]
# (the options are passed to every script; --quick is the CI smoke mode, a few seconds each)
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python}"
status=0
for bench in checkpoint foreach overhead throughput floor scale recovery ui s3 copy cli; do
    echo "=== bench/${bench}.py $* ==="
    started=$(date +%s)
    if ! "$python" -m "bench.${bench}" "$@"; then
        echo "bench/${bench}.py failed" >&2
        status=1
    fi
    echo "=== bench/${bench}.py: $(( $(date +%s) - started )) s ==="
done
exit "$status"
