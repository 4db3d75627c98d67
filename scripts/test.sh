#!/usr/bin/env bash
# The whole suite, as `make test` runs it (and CI, through .ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
export PATH="$PWD/$VENV/bin:$PATH"
start=$(date +%s)

scripts/static.sh
# Two lanes (pytest-xdist): one lab module waits on its nodes for much of its time, and a
# second lane uses what the first leaves of the machine. Each module stays in one lane, in
# file order; tests/conftest.py starts the longest modules first. LANES=1 runs one lane.
LANES=${LANES:-2}
echo "==> pytest ($LANES lanes)"
set +e
if [ "$LANES" -gt 1 ]; then
  pytest -p no:cacheprovider --durations=25 -n "$LANES" --dist loadscope --no-loadscope-reorder "$@"
else
  pytest -p no:cacheprovider --durations=25 "$@"
fi
rc=$?
set -e
if [ $rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi
echo "==> make test finished in $(( $(date +%s) - start )) s (pytest exit $rc)"
exit $rc
