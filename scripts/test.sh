#!/usr/bin/env bash
# Sets up, builds and runs every test (the README's test command; CI runs this).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
[ -x scripts/fetch-test-data.sh ] && scripts/fetch-test-data.sh
scripts/build.sh
cd build && ctest --output-on-failure -j"$(nproc)" --timeout 600
