#!/usr/bin/env bash
# A ~120M-parameter Llama-shaped base for the experiments (issue 15), pretrained by lowrank itself
# (`lowrank train --full`) on the bundled base model's corpus and tokenizer, in at most
# TRAIN_SECONDS of training on one GPU.
#
#   scripts/base-model/pretrain_lowrank.sh prepare            here (Debian 12 + npm): the corpus as
#                                                              two gzipped .txt files (~12 MB) in
#                                                              out/base120m/ (carry that folder)
#   scripts/base-model/pretrain_lowrank.sh gpu                 the GPU box: random init, a short
#                                                              timing run, pretraining, validation
#                                                              → out/base120m/model/ (+ summary.json)
#   scripts/base-model/pretrain_lowrank.sh dry-run             here, on the CPU: the same steps on a
#                                                              tiny shape and a slice of the data
#                                                              (in out/base120m-dry/)
#
# prepare runs scripts/make-base-model.sh corpus if .devrun/base/corpus is missing, then writes
# each document as <|begin_of_text|> text <|end_of_text|>, concatenated (train.txt.gz, val.txt.gz):
# `lowrank train` packs a .txt file into --seq-len blocks, reading the special tokens in the text.
# gpu: scripts/base-model/init_model.py (numpy) writes the random model (N(0, 0.02), tokenizer of
# models/base); 30 steps measure tokens/s; the step count is then min(EPOCHS epochs, what fits in
# TRAIN_SECONDS), so that the cosine schedule ends where training ends; validation loss every 500
# steps and at the end. Knobs (environment): SHAPE ("--hidden 768 --layers 16 --heads 12 --ffn
# 2048": 119.6M parameters), SEQ (512), BATCH (64 sequences: 32,768 tokens a step), LR (6e-4),
# WARMUP (200), EPOCHS (4: 8 overfit this 8.9M-token corpus, docs/experiments.md), TRAIN_SECONDS (420), DEVICE (cuda), LOWRANK (.devrun/cuda-build/bin/
# lowrank when that pack exists, else build/lowrank), OUT (out/base120m).
# The model folder holds bf16 weights (train --full's output); the experiments then use it with
#   MODEL=out/base120m/model DEVICE=cuda scripts/experiments/run.sh TASK quality
set -euo pipefail
cd "$(dirname "$0")/../.."
mode=${1:-}
out=${OUT:-out/base120m}
mkdir -p "$out"

case "$mode" in
  prepare)
    corpus=${CORPUS:-.devrun/base/corpus}
    [ -s "$corpus/train.jsonl" ] || scripts/make-base-model.sh corpus
    for split in train val; do
      python3 - "$corpus/$split.jsonl" <<'PY' | gzip -9n > "$out/$split.txt.gz"
import json, sys
for line in open(sys.argv[1], encoding="utf-8"):
    if line.strip():
        sys.stdout.write("<|begin_of_text|>" + json.loads(line)["text"] + "<|end_of_text|>")
PY
    done
    ls -la "$out"
    exit 0 ;;
  gpu|dry-run) ;;
  *) sed -n '2,27p' "$0" >&2; exit 2 ;;
esac

if [ "$mode" = dry-run ]; then  # tiny shape, CPU, a 200 kB slice: checks the plumbing only
  shape=${SHAPE:---hidden 64 --layers 2 --heads 4 --ffn 128}
  device=${DEVICE:-cpu} seq=${SEQ:-64} batch=${BATCH:-4} train_seconds=${TRAIN_SECONDS:-20}
  calib=8 eval_every=20
else
  shape=${SHAPE:---hidden 768 --layers 16 --heads 12 --ffn 2048}
  device=${DEVICE:-cuda} seq=${SEQ:-512} batch=${BATCH:-64} train_seconds=${TRAIN_SECONDS:-420}
  calib=30 eval_every=500
fi
lowrank=${LOWRANK:-build/lowrank}
if [ -z "${LOWRANK:-}" ] && [ -d .devrun/cuda-build ] && [ "$device" != cpu ]; then
  . scripts/device-env.sh .devrun/cuda-build
  lowrank=.devrun/cuda-build/bin/lowrank
fi
# The dry run works in OUT-dry (so that OUT holds only what the box needs: the two .gz files)
work=$out
[ "$mode" = dry-run ] && work=$out-dry && mkdir -p "$work"
for split in train val; do
  [ -s "$out/$split.txt.gz" ] || { echo "error: no $out/$split.txt.gz (run 'pretrain_lowrank.sh prepare' here and carry $out)" >&2; exit 2; }
  if [ "$mode" = dry-run ]; then
    python3 -c 'import gzip,sys; sys.stdout.write(gzip.open(sys.argv[1],"rt",encoding="utf-8").read(200000))' "$out/$split.txt.gz" > "$work/$split.txt"
  else
    python3 -c 'import gzip,shutil,sys; shutil.copyfileobj(gzip.open(sys.argv[1],"rb"), open(sys.argv[2],"wb"))' "$out/$split.txt.gz" "$work/$split.txt"
  fi
done
train_txt=$work/train.txt val_txt=$work/val.txt init=$work/init model=$work/model log=$work/pretrain.log
{
  echo "== pretrain_lowrank $mode: $(date -u +%FT%TZ), device $device, lowrank $lowrank"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
  rm -rf "$init" "$model" "$work/calib"
  # shellcheck disable=SC2086
  python3 scripts/base-model/init_model.py "$init" --tokenizer-from models/base $shape
  common=(--model "$init" --data "$train_txt" --full --seq-len "$seq" --batch-size "$batch" --lr "${LR:-6e-4}"
          --schedule cosine --max-grad-norm 1 --weight-decay 0 --seed 1 --device "$device" --quiet)
  echo "== timing run: $calib steps"
  "$lowrank" train "${common[@]}" --out "$work/calib" --steps "$calib" --warmup 0
  # The corpus size in tokens, from the timing run: each step logs its epoch = (step × batch) /
  # blocks, with blocks = the .txt's tokens / SEQ (no forward pass over the corpus needed)
  tokens=$(python3 -c '
import json, sys
r = [json.loads(l) for l in open(sys.argv[1]) if "\"epoch\"" in l][-1]
print(round(r["step"] * int(sys.argv[2]) / r["epoch"]) * int(sys.argv[3]))' "$work/calib/metrics.jsonl" "$batch" "$seq")
  steps=$(python3 - "$work/calib/metrics.jsonl" "$tokens" "$seq" "$batch" "${EPOCHS:-4}" "$train_seconds" <<'PY'
import json, statistics, sys
path, tokens, seq, batch, epochs, budget = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]), float(sys.argv[6])
rows = [json.loads(l) for l in open(path) if '"tokens_per_second"' in l]
late = rows[len(rows) // 3:]
step_s = statistics.median(r["tokens"] / r["tokens_per_second"] for r in late)
per_step = seq * batch
by_epochs = int(epochs * tokens / per_step)
by_time = int(budget / step_s)
print(max(1, min(by_epochs, by_time)))
sys.stderr.write("timing: %.1f ms a step (%.0f tokens/s); %d tokens a step; corpus %d tokens: %d steps for %g epochs, "
                 "%d in %g s\n" % (1e3 * step_s, per_step / step_s, per_step, tokens, by_epochs, epochs, by_time, budget))
PY
)
  rm -rf "$work/calib"
  warmup=${WARMUP:-200}
  [ "$warmup" -ge "$steps" ] && warmup=$((steps / 10))
  echo "== pretraining: $steps steps, warmup $warmup"
  t0=$(date +%s)
  "$lowrank" train "${common[@]}" --out "$model" --steps "$steps" --warmup "$warmup" \
    --eval-data "$val_txt" --eval-every "$eval_every"
  t1=$(date +%s)
  "$lowrank" eval --model "$model" --data "$val_txt" --seq-len "$seq" --json --quiet --device "$device" > "$work/val.json"
  "$lowrank" inspect "$model"
  python3 - "$model/metrics.jsonl" "$work/val.json" "$steps" "$((t1 - t0))" "$seq" "$batch" "$tokens" <<'PY' | tee "$work/summary.json"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
st = [r for r in rows if "tokens_per_second" in r]
ev = [r for r in rows if "eval_loss" in r]
val = json.load(open(sys.argv[2]))
steps, wall, seq, batch, tokens = (int(x) for x in sys.argv[3:])
print(json.dumps({"steps": steps, "train_wall_s": wall, "tokens_per_step": seq * batch,
                  "epochs": round(steps * seq * batch / tokens, 2), "corpus_tokens": tokens,
                  "tokens_per_s": round(sum(r["tokens"] for r in st[5:]) / sum(r["tokens"] / r["tokens_per_second"] for r in st[5:]), 1) if len(st) > 5 else None,
                  "final_train_loss": st[-1]["loss"], "val_loss": val["loss"], "val_perplexity": val["perplexity"],
                  "eval_curve": [(r.get("step"), r["eval_loss"]) for r in ev],
                  "gpu_peak_reserved_gib": max((r.get("gpu_peak_reserved_gib", 0) for r in st), default=None)}))
PY
  echo "== done: $(date -u +%FT%TZ)"
} 2>&1 | tee "$log"
exit "${PIPESTATUS[0]}"
