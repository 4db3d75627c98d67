#!/usr/bin/env bash
# The static checks shared by `make check` and `make test`: lint, types, layers, generated files.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
export PATH="$PWD/$VENV/bin:$PATH"

echo "==> ruff"
ruff check src tests
echo "==> mypy (strict)"
mypy
echo "==> layers: imports go down only, no circles (lint-imports)"
out=$(lint-imports --no-cache 2>&1) || { echo "$out"; exit 1; }
echo "$out" | grep -E 'KEPT|Contracts:'
echo "==> generated files are current (lock --check, render --check)"
for m in stacklock.yaml examples/static.yaml examples/lab.yaml examples/upgrade.yaml examples/onprem/stacklock.yaml tests/golden/static-lab/manifest.yaml; do
  stacklock --manifest "$m" lock --check
  stacklock --manifest "$m" render --check
done
echo "==> docs/roles.md matches the roles' argument_specs"
python scripts/role_docs.py --check
echo "==> the documentation site builds: no broken link or anchor, every page in the nav"
NO_MKDOCS_2_WARNING=1 mkdocs build --strict --site-dir "$PWD/.cache/site"  # not --quiet: it hides the warnings strict counts
echo "==> monitoring: alert rules and their tests (promtool), dashboard, lab Prometheus config"
# a separate step: promtool comes from Debian's prometheus package, installed here when this
# runs as root with apt (CI, make test); elsewhere it says so and skips
scripts/promtool.sh --if-installable
