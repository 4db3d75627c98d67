#!/usr/bin/env bash
# Installs what stacklock's demo and tests need on a fresh Debian 12 machine (run as root).
# Idempotent and quick when everything is already there. Used by `make demo` and `make test`.
set -euo pipefail

need=()
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v dockerd >/dev/null || need+=(docker.io)
command -v ip >/dev/null || need+=(iproute2)
command -v ssh >/dev/null || need+=(openssh-client)
command -v ssh-keygen >/dev/null || need+=(openssh-client)
command -v dpkg-scanpackages >/dev/null || need+=(dpkg-dev)
command -v curl >/dev/null || need+=(curl)
command -v docker-registry >/dev/null || need+=(docker-registry) # the lab image registry (scripts/lab-registry.sh)
command -v make >/dev/null || need+=(make)
command -v git >/dev/null || need+=(git)
python3 -c 'import ensurepip, venv' 2>/dev/null || need+=(python3-venv)

if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "stacklock: missing ${need[*]}; run as root (or install them) first" >&2
    exit 3
  fi
  echo "==> installing ${need[*]} (apt)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
