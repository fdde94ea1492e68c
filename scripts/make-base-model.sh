#!/usr/bin/env bash
# Reproduces the bundled base model models/base/ (docs/base-model.md tells the story and numbers).
#
#   scripts/make-base-model.sh corpus            1. here (Debian 12 + npm): the pretraining corpus
#                                                   → .devrun/base/corpus/{train,val}.jsonl (~26 MB)
#   scripts/make-base-model.sh gpu OUT [ARGS]    2. on a GPU box (python3 with torch and tokenizers;
#                                                   nothing downloaded): trains the tokenizer, then
#                                                   pretrains (at most 8 epochs or 4 min of training; ≈ 2 min on one H200);
#                                                   writes OUT/base-model.tar, OUT/metrics.jsonl,
#                                                   OUT/summary.json, OUT/make-base-model.log.
#                                                   ARGS go to pretrain.py (e.g. --minutes 4).
#   scripts/make-base-model.sh install TAR       3. here: unpacks TAR into models/base/ and checks
#                                                   the folder with lowrank inspect / eval if built.
#
# Step 2 reads .devrun/base/corpus (carry it to the box) and works in $TMPDIR; it needs no repo
# build. CORPUS=DIR overrides the corpus folder, TOKENIZER=DIR skips tokenizer training (uses that
# folder's tokenizer.json and tokenizer_config.json), PYTHON=... the interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
corpus=${CORPUS:-$root/.devrun/base/corpus}

case "${1:-}" in
  corpus)
    scripts/base-model/prepare_corpus.sh "$root/.devrun/base"
    ;;
  gpu)
    out=${2:?usage: make-base-model.sh gpu OUT [pretrain args]}
    shift 2
    mkdir -p "$out"
    out=$(cd "$out" && pwd)
    [ -f "$corpus/train.jsonl" ] && [ -f "$corpus/val.jsonl" ] ||
      { echo "error: no corpus in $corpus (run 'scripts/make-base-model.sh corpus' first)" >&2; exit 2; }
    work=$(mktemp -d "${TMPDIR:-/tmp}/lowrank-base.XXXXXX")
    py=${PYTHON:-python3}
    {
      echo "== make-base-model gpu: $(date -u +%FT%TZ) on $(hostname 2>/dev/null || echo ?)"
      command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
      "$py" -c 'import sys, torch, tokenizers; print("python", sys.version.split()[0], "torch", torch.__version__, "tokenizers", getattr(tokenizers, "__version__", "?"))'
      "$py" -c 'import transformers; print("transformers", transformers.__version__)' 2>/dev/null || echo "transformers: not importable"
      head -n 20 "$corpus/MANIFEST.txt" 2>/dev/null || true
      if [ -n "${TOKENIZER:-}" ]; then  # reuse a tokenizer folder instead of training one
        echo "== tokenizer from $TOKENIZER"
        mkdir -p "$work/tokenizer" && cp "$TOKENIZER"/tokenizer.json "$TOKENIZER"/tokenizer_config.json "$work/tokenizer/"
      else
        echo "== train_tokenizer"
        "$py" scripts/base-model/train_tokenizer.py --corpus "$corpus" --out "$work/tokenizer"
      fi
      echo "== pretrain"
      "$py" scripts/base-model/pretrain.py --corpus "$corpus" --tokenizer "$work/tokenizer" --out "$out" \
        --model-dir "$work/model" --tar "$out/base-model.tar" --minutes 4 "$@"
      echo "== done: $(date -u +%FT%TZ)"
      ls -la "$out"
    } 2>&1 | tee "$out/make-base-model.log"
    exit "${PIPESTATUS[0]}"
    ;;
  install)
    tar=${2:?usage: make-base-model.sh install base-model.tar}
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    tar -xf "$tar" -C "$tmp"
    for f in config.json model.safetensors generation_config.json tokenizer.json tokenizer_config.json; do
      [ -f "$tmp/base/$f" ] || { echo "error: $tar has no base/$f" >&2; exit 2; }
    done
    rm -rf models/base
    mkdir -p models
    mv "$tmp/base" models/base
    echo "installed models/base ($(du -sh models/base | cut -f1))" >&2
    if [ -x build/lowrank ]; then
      build/lowrank inspect models/base
    fi
    ;;
  *)
    sed -n '2,18p' "$0" >&2
    exit 2
    ;;
esac
