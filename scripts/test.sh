#!/usr/bin/env bash
# The whole suite, as `make test` runs it (and CI, through .ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
export PATH="$PWD/$VENV/bin:$PATH"
start=$(date +%s)

echo "==> ruff"
ruff check src tests
echo "==> mypy (strict)"
mypy
echo "==> generated files are current (lock --check, render --check)"
for m in stacklock.yaml examples/static.yaml examples/lab.yaml examples/upgrade.yaml examples/onprem/stacklock.yaml tests/golden/static-lab/manifest.yaml; do
  stacklock --manifest "$m" lock --check
  stacklock --manifest "$m" render --check
done
echo "==> docs/roles.md matches the roles' argument_specs"
python scripts/role_docs.py --check
echo "==> pytest"
set +e
pytest -p no:cacheprovider --durations=12 "$@"
rc=$?
set -e
if [ $rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi
echo "==> make test finished in $(( $(date +%s) - start )) s (pytest exit $rc)"
exit $rc
