#!/usr/bin/env bash
# Run HERE (the build machine): builds lowrank with the CUDA backend for Hopper (sm_90 + PTX) and
# packs what the GPU box needs into .devrun/cuda-build (gitignored, kept well under 60 MB):
#   bin/  lowrank, lowrank_tests, bench_cuda_ops, bench_train_gpu, bench_pipeline_gpu, bench_cpu_infer,
#         bench_decode_gpu, bench_serve_load, bench_lora_rows, bench_mixed_decode_gpu (stripped,
#         xz-compressed; scripts/device-env.sh unpacks them on the box)
#   lib/  xz-compressed host libraries the box may lack (OpenBLAS and its Fortran runtime, PCRE2,
#         ...); scripts/device-test.sh unpacks them only when the loader cannot find them.
#   MANIFEST  commit, compiler versions, sizes
# The CUDA libraries themselves (cudart, cuBLAS/cuBLASLt 13) are the box's own.
# usage: scripts/device-pack.sh [BUILD_DIR (default build)] [extra cmake args...]
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
shift || true
out=.devrun/cuda-build
gen=()
command -v ninja >/dev/null && gen=(-G Ninja)
[ -f "$build/CMakeCache.txt" ] && gen=()
cmake -S . -B "$build" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release -DLOWRANK_CUDA=ON \
  -DCMAKE_CUDA_ARCHITECTURES="90-real;90-virtual" "$@" >/dev/null
cmake --build "$build" -j"${JOBS:-2}" --target lowrank_cli lowrank_tests bench_cuda_ops bench_train_gpu bench_pipeline_gpu bench_cpu_infer bench_decode_gpu bench_serve_load bench_lora_rows bench_mixed_decode_gpu

rm -rf "$out"
mkdir -p "$out/bin" "$out/lib"
for f in "$build/lowrank" "$build/tests/lowrank_tests" "$build/bench/bench_cuda_ops" "$build/bench/bench_train_gpu" "$build/bench/bench_pipeline_gpu" "$build/bench/bench_cpu_infer" "$build/bench/bench_decode_gpu" "$build/bench/bench_serve_load" "$build/bench/bench_lora_rows" "$build/bench/bench_mixed_decode_gpu"; do
  cp "$f" "$out/bin/"
  strip --strip-unneeded "$out/bin/$(basename "$f")"  # host symbols only; device code is kept
  xz -6 -T0 "$out/bin/$(basename "$f")"  # the device tool carries 64 MiB with the tree: unpacked by device-env.sh
done
# Host libraries that are neither glibc/libstdc++ (newer on the box) nor CUDA's (the box's own).
ldd "$build/tests/lowrank_tests" "$build/lowrank" | awk '/=> \// {print $3}' | sort -u |
  grep -v -E '/(libc|libm|libdl|librt|libpthread|libstdc\+\+|libgcc_s|ld-linux[^/]*|libcuda|libcudart|libcublas|libcublasLt)\.so' |
  while read -r lib; do
    xz -9 -T1 -c "$(readlink -f "$lib")" > "$out/lib/$(basename "$lib").xz"
  done
{
  echo "commit: $(git rev-parse HEAD)$(git diff --quiet HEAD -- . ':!.devrun' || echo ' (+ uncommitted changes)')"
  echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(. /etc/os-release && echo "$PRETTY_NAME")"
  echo "nvcc: $(nvcc --version | tail -1)"
  echo "architectures: 90-real;90-virtual"
  (cd "$out" && du -ab bin lib | sort -k2)
} > "$out/MANIFEST"
total=$(du -sb "$out" | cut -f1)
echo "packed $out: $((total / 1024 / 1024)) MB"
if [ "$total" -gt $((50 * 1024 * 1024)) ]; then
  echo "error: $out is over 50 MB" >&2
  exit 1
fi
echo "on the GPU box: scripts/device-test.sh --prebuilt $out"
