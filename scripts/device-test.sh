#!/usr/bin/env bash
# Run ON the GPU box, from the repository root: runs lowrank's CUDA tests (and optionally the
# CUDA benchmark) with binaries built elsewhere by scripts/device-pack.sh, since the box cannot
# build lowrank itself (no PCRE2/OpenBLAS development files there).
# usage: scripts/device-test.sh --prebuilt .devrun/cuda-build [--filter GTEST_FILTER]
#                               [--bench] [--sanitize] [--all]
#   --filter    gtest filter (default: the CUDA op tests, the op table, the op-layer tests and the model-path
#               parity tests: eval of every fixture model, LoRA gradients, a 50-step curve,
#               generation with adapters — all against the CPU reference)
#   --bench     also run bench_cuda_ops
#   --sanitize  also run compute-sanitizer memcheck (Firecracker only) on SANITIZE_FILTER
#               (default: the small-shape attention tests, the kernels that index the most)
#   --all       the whole test suite (CLI tests need the build path the pack was built at)
# Logs and the gtest XML go to $OUT when it is set (the device tool brings $OUT back).
set -uo pipefail
cd "$(dirname "$0")/.."
prebuilt="" filter="Cuda*:*/Cuda*:OpsDispatch*:OpTable*:Philox*" bench=0 sanitize=0
while [ $# -gt 0 ]; do
  case "$1" in
    --prebuilt) prebuilt=$2; shift 2 ;;
    --filter) filter=$2; shift 2 ;;
    --bench) bench=1; shift ;;
    --sanitize) sanitize=1; shift ;;
    --all) filter="*"; shift ;;
    *) echo "usage: $0 --prebuilt DIR [--filter F] [--bench] [--sanitize] [--all]" >&2; exit 2 ;;
  esac
done
[ -n "$prebuilt" ] && . scripts/device-env.sh "$prebuilt"  # unpacks the binaries, sets the library path
[ -n "$prebuilt" ] && [ -x "$prebuilt/bin/lowrank_tests" ] || {
  echo "error: --prebuilt DIR must hold bin/lowrank_tests (run scripts/device-pack.sh first)" >&2
  exit 2
}
bin=$prebuilt/bin
logdir=${OUT:-$prebuilt/logs}
mkdir -p "$logdir"

echo "== GPU"
nvidia-smi --query-gpu=index,name,driver_version,memory.total,memory.used,clocks.sm,clocks.max.sm,temperature.gpu \
  --format=csv || echo "(nvidia-smi failed)"
[ -f "$prebuilt/MANIFEST" ] && { echo "== pack"; cat "$prebuilt/MANIFEST"; }

export LOWRANK_SOURCE_DIR="$PWD"  # fixtures are read from this checkout, not the build machine's
export LOWRANK_CLI="$PWD/$bin/lowrank"  # CLI tests run the packed binary
if ldd "$bin/lowrank_tests" | grep "not found"; then
  echo "error: libraries still missing (above)" >&2
  exit 1
fi

echo "== tests ($filter)"
"$bin/lowrank_tests" --gtest_filter="$filter" --gtest_output="xml:$logdir/cuda-tests.xml" 2>&1 |
  tee "$logdir/cuda-tests.log"
status=${PIPESTATUS[0]}

if [ "$sanitize" = 1 ]; then
  sfilter=${SANITIZE_FILTER:-CudaAttention.SmallShapes*:CudaAttention.TensorCore*}
  echo "== compute-sanitizer memcheck ($sfilter)"
  compute-sanitizer --tool memcheck --error-exitcode 3 "$bin/lowrank_tests" \
    --gtest_filter="$sfilter" 2>&1 | tail -40 | tee "$logdir/sanitizer.log"
  [ "${PIPESTATUS[0]}" = 0 ] || status=3
fi

if [ "$bench" = 1 ]; then
  echo "== bench_cuda_ops"
  "$bin/bench_cuda_ops" 2>&1 | tee "$logdir/bench_cuda_ops.txt"
fi
echo "== done: tests exit $status"
exit "$status"
