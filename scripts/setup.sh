#!/usr/bin/env bash
# Idempotent set-up on a fresh Debian machine: system packages, virtualenv, lamfs + test extras.
# Usage: bash scripts/setup.sh          (VENV=/path overrides the virtualenv location)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${VENV:-$here/.venv}"
sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"

# fuse3 (not Debian's v2 `fuse`, which conflicts), headers + pkg-config so pyfuse3 builds from source,
# attr for getfattr/setfattr, rsync for tests, postgresql for the shared-catalog tests, systemd for
# `systemd-analyze verify` of the unit files in systemd/.
pkgs=(fuse3 libfuse3-dev pkg-config attr rsync postgresql systemd)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "lamfs setup: installing system packages: ${missing[*]}"
  $sudo apt-get update -qq
  # env after sudo: sudo resets the environment, and a debconf prompt would hang CI
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -x "$venv/bin/python" ]; then
  echo "lamfs setup: creating virtualenv $venv"
  python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --upgrade pip
echo "lamfs setup: installing lamfs and test extras (first run takes a few minutes)"
"$venv/bin/python" -m pip install -q -e "$here[test]"
echo "lamfs setup: done ($venv)"
