# Sourced ON the GPU box (repository root) by device-test.sh and the bench/*.sh drivers: the
# library path for binaries packed by scripts/device-pack.sh. Sets LD_LIBRARY_PATH to the box's
# CUDA runtime, the pip cuDNN wheel's folder (the fused attention path dlopens libcudnn.so.9;
# optional) and, only when the loader misses one, the packed host libraries (unpacked once).
#   . scripts/device-env.sh [PACK_DIR (default .devrun/cuda-build)]
lowrank_pack=${1:-.devrun/cuda-build}
lowrank_unxz() {  # FILE.xz DEST (the box may lack the xz tool; Python's lzma always works)
  if command -v xz >/dev/null; then xz -dc "$1" > "$2"
  else python3 -c 'import lzma,sys; open(sys.argv[2],"wb").write(lzma.open(sys.argv[1]).read())' "$1" "$2"; fi
}
for z in "$lowrank_pack"/bin/*.xz; do  # the packed binaries, unpacked once
  [ -e "$z" ] && [ ! -x "${z%.xz}" ] && lowrank_unxz "$z" "${z%.xz}" && chmod +x "${z%.xz}"
done
export LD_LIBRARY_PATH="/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
lowrank_cudnn=$(python3 -c 'import nvidia.cudnn as m, os; print(os.path.join(list(m.__path__)[0], "lib"))' 2>/dev/null)
if [ -n "$lowrank_cudnn" ] && [ -d "$lowrank_cudnn" ]; then
  export LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$lowrank_cudnn"
  echo "== cuDNN: $lowrank_cudnn" >&2
fi
# NCCL (multi-GPU training dlopens libnccl.so.2): the toolkit's, else the pip wheel's folder.
if ! ldconfig -p 2>/dev/null | grep -q libnccl.so.2 && [ ! -e /usr/local/cuda/lib64/libnccl.so.2 ]; then
  lowrank_nccl=$(python3 -c 'import nvidia.nccl as m, os; print(os.path.join(list(m.__path__)[0], "lib"))' 2>/dev/null)
  [ -n "$lowrank_nccl" ] && [ -d "$lowrank_nccl" ] && export LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$lowrank_nccl" &&
    echo "== NCCL: $lowrank_nccl" >&2
fi
# Any unpacked binary will do (a pack slimmed for one job may hold only `lowrank`). No pipe into
# `grep -q`: under pipefail its early exit would fail the pipeline.
lowrank_ldd=$(for b in "$lowrank_pack"/bin/*; do [ "${b%.xz}" = "$b" ] && ldd "$b" 2>/dev/null; done; true)
if [[ "$lowrank_ldd" == *"not found"* ]]; then
  lowrank_libs=$(mktemp -d)
  for z in "$lowrank_pack"/lib/*.xz; do
    [ -e "$z" ] || continue
    dst="$lowrank_libs/$(basename "$z" .xz)"
    lowrank_unxz "$z" "$dst"
  done
  export LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$lowrank_libs"
  echo "== using packed host libraries: $(ls "$lowrank_libs" | tr '\n' ' ')" >&2
fi
