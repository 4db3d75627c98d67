#!/usr/bin/env bash
# `make check`: the fast lane for day-to-day work (static checks and the unit tests; no lab,
# no Molecule, no Terraform runs). `make test` is the whole suite that CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
export PATH="$PWD/$VENV/bin:$PATH"
start=$(date +%s)
scripts/static.sh
echo "==> pytest tests/unit -m 'not slow' (make test runs the slow ones too)"
set +e
pytest -p no:cacheprovider -q --durations=10 -n 2 --dist loadscope --no-loadscope-reorder \
  -m "not slow" tests/unit "$@"
rc=$?
set -e
if [ $rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi
echo "==> make check finished in $(( $(date +%s) - start )) s (pytest exit $rc)"
exit $rc
