#!/usr/bin/env bash
# Data parallel across two "hosts" on one machine: two network namespaces joined by a veth pair,
# each with its own address (10.77.0.1, 10.77.0.2) and its own loopback, one `lowrank train`
# process in each with torchrun's variables (LOCAL_RANK 0 on both, MASTER_ADDR the first host's
# address) on CPU ranks, whose gradient sums cross the veth over TCP. Checks that the run equals
# one process on one device (losses, gradient norms and the adapter to 1e-5), then kills the
# second host's process after its third step, and cuts the link between the hosts mid-run, and
# checks that the processes stop with errors naming the other rank instead of hanging. Needs root
# (ip netns) and python3 (the comparison).
#
#   scripts/multihost-cpu.sh [BUILD_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="$(realpath "${1:-build}")/lowrank"
MODEL=tests/fixtures/models/llama
OUT="$(mktemp -d)"
H0=lr_host0 H1=lr_host1 PORT=29533
del_namespaces() { ip netns del $H0 2>/dev/null || true; ip netns del $H1 2>/dev/null || true; }
trap 'del_namespaces; rm -rf "$OUT"' EXIT
del_namespaces
seconds_since() { awk -v ns="$(( $(date +%s%N) - $1 ))" 'BEGIN { printf "%.2f", ns / 1e9 }'; }

ip netns add $H0
ip netns add $H1
ip link add lr_veth0 type veth peer name lr_veth1
ip link set lr_veth0 netns $H0
ip link set lr_veth1 netns $H1
ip -n $H0 addr add 10.77.0.1/24 dev lr_veth0
ip -n $H1 addr add 10.77.0.2/24 dev lr_veth1
for ns in $H0 $H1; do ip -n $ns link set lo up; done
ip -n $H0 link set lr_veth0 up
ip -n $H1 link set lr_veth1 up

ARGS="train --model $MODEL --data $MODEL/eval.jsonl --targets all-linear --rank 4 --dropout 0 --batch-size 2
      --grad-accum 2 --lr 5e-3 --warmup 2 --device cpu --quiet"
on_host() {  # NS RANK OUT [ENV...] [-- FLAGS]: one rank of the two-host run in namespace NS
  local ns=$1 rank=$2 out=$3
  shift 3
  ip netns exec "$ns" env RANK="$rank" WORLD_SIZE=2 LOCAL_RANK=0 MASTER_ADDR=10.77.0.1 MASTER_PORT=$PORT \
    LOWRANK_DIST_TIMEOUT_S=${TIMEOUT_S:-30} "$@" "$BIN" $ARGS ${EXTRA:---steps 6} --out "$out"
}

echo "== one process, one device"
"$BIN" $ARGS --steps 6 --out "$OUT/one"
echo "== two hosts (10.77.0.1: rank 0, 10.77.0.2: rank 1)"
start=$(date +%s%N)
on_host $H1 1 "$OUT/two" > "$OUT/rank1.log" 2>&1 &
on_host $H0 0 "$OUT/two" 2>&1 | tee "$OUT/rank0.log"
wait $!
echo "two-host run: $(seconds_since "$start") s"
python3 - "$OUT/one" "$OUT/two" <<'PY'
import json, struct, sys
def metrics(d):
    return [json.loads(l) for l in open(d + "/metrics.jsonl") if '"loss"' in l]
def tensors(d):
    raw = open(d + "/adapter_model.safetensors", "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    head = json.loads(raw[8:8 + n])
    out = {}
    for k, v in head.items():
        if k == "__metadata__": continue
        a, b = v["data_offsets"]
        out[k] = struct.unpack("<%df" % ((b - a) // 4), raw[8 + n + a:8 + n + b])
    return out
one, two = sys.argv[1], sys.argv[2]
ma, mb = metrics(one), metrics(two)
assert len(ma) == len(mb) == 6, (len(ma), len(mb))
for a, b in zip(ma, mb):
    assert abs(a["loss"] - b["loss"]) <= 1e-5 * abs(a["loss"]), (a, b)
    assert abs(a["grad_norm"] - b["grad_norm"]) <= 1e-5 * a["grad_norm"], (a, b)
ta, tb = tensors(one), tensors(two)
assert ta.keys() == tb.keys()
worst = max(abs(x - y) for k in ta for x, y in zip(ta[k], tb[k]))
assert worst <= 1e-5, worst
print("equal to one device: 6 steps, losses and gradient norms to 1e-5, %d adapter tensors (largest difference %.2e)"
      % (len(ta), worst))
PY

echo "== the second host's process killed after its third step"
start=$(date +%s%N)
on_host $H1 1 "$OUT/killed" LOWRANK_TEST_KILL_AFTER_STEP=3 > "$OUT/rank1-killed.log" 2>&1 &
set +e
on_host $H0 0 "$OUT/killed" > "$OUT/rank0-killed.log" 2>&1
code=$?
set -e
wait || true
echo "rank 0 exited with $code after $(seconds_since "$start") s:"
cat "$OUT/rank0-killed.log"
[ "$code" -eq 2 ] && grep -q "rank 1" "$OUT/rank0-killed.log"

echo "== the link between the hosts cut mid-run (no connection closes: each side waits, then gives up)"
start=$(date +%s%N)
TIMEOUT_S=5 EXTRA="--steps 400" on_host $H1 1 "$OUT/cut" > "$OUT/rank1-cut.log" 2>&1 &
rank1=$!
( sleep 1.5; ip -n $H1 link set lr_veth1 down ) &
set +e
TIMEOUT_S=5 EXTRA="--steps 400" on_host $H0 0 "$OUT/cut" > "$OUT/rank0-cut.log" 2>&1
code=$?
wait $rank1
code1=$?
set -e
echo "rank 0 exited with $code after $(seconds_since "$start") s: $(grep error "$OUT/rank0-cut.log")"
echo "rank 1 exited with $code1: $(grep error "$OUT/rank1-cut.log")"
[ "$code" -eq 2 ] && [ "$code1" -eq 2 ] && grep -q "rank 1" "$OUT/rank0-cut.log"
echo "ok"
