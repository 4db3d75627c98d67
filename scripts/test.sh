#!/usr/bin/env bash
# The whole suite, as `make test` runs it (and CI, through .ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
export PATH="$PWD/$VENV/bin:$PATH"
start=$(date +%s)

scripts/static.sh
echo "==> pytest"
set +e
pytest -p no:cacheprovider --durations=10 "$@"
rc=$?
set -e
if [ $rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi
echo "==> make test finished in $(( $(date +%s) - start )) s (pytest exit $rc)"
exit $rc
