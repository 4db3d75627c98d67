#!/usr/bin/env bash
# The monitoring checks (docs/observability.md): promtool on the alert rules and their unit
# tests, lint and types of monitoring/*.py, the dashboard regenerated from code, the lab
# Prometheus config.
#
#   scripts/promtool.sh                  install promtool if missing (root: apt), run the checks
#   scripts/promtool.sh --if-installable the same, but skip (exit 0) where promtool is missing
#                                        and cannot be installed (not root, no apt-get)
#   scripts/promtool.sh --install-only   install Debian's prometheus (promtool) and stop
#
# promtool comes with Debian's `prometheus` package (2.42 in bookworm). It is installed the way
# scripts/bootstrap.sh installs its tools; the package's service is not started by the install
# (a policy-rc.d refuses it while apt runs) and is disabled where systemd runs: only
# scripts/lab-prometheus.sh starts a Prometheus, on 127.0.0.1, and stops it again.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
export PATH="$PWD/$VENV/bin:$PATH"

mode=check
case "${1:-}" in
  "") ;;
  --if-installable) mode=if-installable ;;
  --install-only) mode=install ;;
  *) echo "usage: scripts/promtool.sh [--if-installable | --install-only]" >&2; exit 2 ;;
esac

install_prometheus() {
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    return 1
  fi
  echo "==> installing promtool (Debian package prometheus, apt)"
  export DEBIAN_FRONTEND=noninteractive
  local guard=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then  # no service start while apt runs
    guard=/usr/sbin/policy-rc.d
    printf '#!/bin/sh\nexit 101\n' >"$guard"
    chmod 0755 "$guard"
  fi
  local rc=0
  { apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus >/dev/null; } \
    || rc=$?
  [ -z "$guard" ] || rm -f "$guard"
  [ "$rc" = 0 ] || return "$rc"
  if [ -d /run/systemd/system ]; then
    systemctl disable --now prometheus.service >/dev/null 2>&1 || true
  fi
}

if ! command -v promtool >/dev/null; then
  if ! install_prometheus; then
    if [ "$mode" = if-installable ]; then
      echo "==> promtool: not installed and not installable here (needs root and apt-get): skipped"
      exit 0
    fi
    echo "stacklock: promtool is missing; run scripts/promtool.sh as root (it installs Debian's" \
         "prometheus package) or install it" >&2
    exit 3
  fi
fi
[ "$mode" != install ] || exit 0

echo "==> promtool $(promtool --version 2>&1 | head -1 | awk '{print $3}'): alert rules"
(cd monitoring && promtool check rules alerts.yml \
   && promtool test rules alerts_test.yml alerts_days_test.yml)
echo "==> ruff and mypy (strict) on monitoring/*.py"
ruff check monitoring
mypy --strict monitoring/dashboard.py monitoring/prometheus_config.py
echo "==> the Grafana dashboard is current (monitoring/dashboard.py --check)"
python monitoring/dashboard.py --check
echo "==> the lab Prometheus config is valid (promtool check config)"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python monitoring/prometheus_config.py --example --out "$tmp/prometheus.yml"
promtool check config --syntax-only "$tmp/prometheus.yml"
