#!/usr/bin/env bash
# The README's main command: set up, build, then run lowrank end to end.
# (Until the bundled base model exists, this runs on a tiny test fixture model.)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh
model=tests/fixtures/models/llama
echo "== lowrank inspect $model"
build/lowrank inspect "$model"
echo "== lowrank eval (base model)"
build/lowrank eval --model "$model" --data "$model/eval.jsonl"
