#!/usr/bin/env bash
# The "Upgrading a stack" walkthrough (docs/upgrading.md) on the lab (examples/upgrade.yaml), timed:
# provision dev, staging and prod (3 nodes) at revision A; start revision B in dev; see the
# promotion refused before dev has evidence; roll B out to dev, promote it to staging, then to
# prod canary first; roll prod back to A; check the ledger. Prints each step's wall time and
# exit code. Edits examples/upgrade.yaml as an engineer would (git restores it), and leaves
# the lab up: `stacklock -m examples/upgrade.yaml destroy --all` removes it.
#
#     make upgrade-demo          (or: scripts/upgrade-walkthrough.sh)
set -uo pipefail
cd "$(dirname "$0")/.."
S=(.venv/bin/stacklock -m examples/upgrade.yaml)
summary=()

run() {  # run EXPECTED-EXIT LABEL -- ARGS...
  local want=$1 label=$2; shift 3
  echo "==> $label: stacklock $*"
  local t0=$SECONDS
  "${S[@]}" "$@"
  local code=$? took=$((SECONDS - t0))
  summary+=("$(printf '%-44s exit %s (expected %s) %5d s' "$label" "$code" "$want" "$took")")
  if [[ $code != "$want" ]]; then
    printf '%s\n' "${summary[@]}"
    echo "FAILED: $label exited $code, expected $want" >&2
    exit 1
  fi
}

if ! git diff --quiet -- examples/upgrade.yaml; then
  echo "examples/upgrade.yaml has changes (an earlier run?); put it back first:" >&2
  echo "  git checkout examples/upgrade.yaml examples/upgrade" >&2
  exit 2
fi
ledger=examples/upgrade/.stacklock/ledger.jsonl
if [[ -e $ledger ]]; then  # a new walkthrough starts without evidence: keep the old one aside
  mv "$ledger" "$ledger.$(date -u +%Y%m%dT%H%M%SZ)"
  echo "==> the earlier run's ledger kept aside as $ledger.<time>"
fi

# the promotion order is walked (dev, then staging, then prod, each verified before the next);
# prod is the last environment of it: --yes is this script's consent
run 0 "provision dev, staging, prod at A" -- provision --all --yes
run 0 "status" -- status
echo "==> the change: environments.dev.stack lab-2026-11 -> lab-2026-12 (revision B)"
sed -i 's/^  dev: {provider: lab, stack: lab-2026-11,/  dev: {provider: lab, stack: lab-2026-12,/' examples/upgrade.yaml
grep -q 'dev: {provider: lab, stack: lab-2026-12' examples/upgrade.yaml || { echo "edit failed" >&2; exit 1; }
run 0 "render" -- render
run 1 "promote staging (refused: no evidence)" -- promote staging
run 0 "rollout dev" -- rollout dev
run 0 "promote staging --rollout" -- promote staging --rollout
run 0 "promote prod --rollout (canary, then 2)" -- promote prod --rollout
run 0 "status" -- status
run 0 "rollback prod (to A)" -- rollback prod
run 0 "verify prod" -- verify prod
run 0 "ledger verify" -- ledger verify
printf '\n%s\n' "${summary[@]}"
