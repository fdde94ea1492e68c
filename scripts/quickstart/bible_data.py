#!/usr/bin/env python3
"""The quickstart's fine-tuning data: the King James Bible (Debian bible-kjv), a domain the
bundled base model never saw.

    bible_data.py BIBLE_TEXT OUT_DIR [--chunk-chars 360] [--eval 64]

BIBLE_TEXT is the output of `bible -l10000 Gen1:1-Rev22:21` ("Book N" headings, then one
"  V text" line per verse). Consecutive verses of a chapter are joined into passages of at most
--chunk-chars characters (so training examples are of similar length and carry some context).
Every passage goes to OUT_DIR/train.jsonl as {"text": ...}, except a fixed, evenly spread
selection of --eval passages that goes to OUT_DIR/eval.jsonl. Deterministic; standard library only.
"""
import argparse
import json
import os
import random
import re


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("bible_text")
    ap.add_argument("out_dir")
    ap.add_argument("--chunk-chars", type=int, default=360)
    ap.add_argument("--eval", type=int, default=64)
    a = ap.parse_args()

    chapters, verses = [], None
    with open(a.bible_text, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            line = line.rstrip("\n")
            m = re.match(r"^\s+(\d+) (.*)$", line)
            if m and verses is not None:
                verses.append(m.group(2).strip())
            elif line.strip() and not line.startswith(" "):
                verses = []  # a "Book N" heading starts a chapter
                chapters.append(verses)
    n_verses = sum(len(c) for c in chapters)
    if n_verses < 1000:
        raise SystemExit("error: %s: only %d verses found (expected the whole Bible)" % (a.bible_text, n_verses))

    passages = []
    for verses in chapters:
        cur = ""
        for v in verses:
            if cur and len(cur) + 1 + len(v) > a.chunk_chars:
                passages.append(cur)
                cur = ""
            cur = (cur + " " + v) if cur else v
        if cur:
            passages.append(cur)
    step = len(passages) // a.eval
    eval_idx = set(range(step // 2, step * a.eval, step))
    train = [p for i, p in enumerate(passages) if i not in eval_idx]
    random.Random(7).shuffle(train)
    os.makedirs(a.out_dir, exist_ok=True)
    with open(os.path.join(a.out_dir, "train.jsonl"), "w", encoding="utf-8") as fh:
        for p in train:
            fh.write(json.dumps({"text": p}) + "\n")
    with open(os.path.join(a.out_dir, "eval.jsonl"), "w", encoding="utf-8") as fh:
        for i in sorted(eval_idx):
            fh.write(json.dumps({"text": passages[i]}) + "\n")
    print("bible data: %d chapters, %d verses -> %d training passages, %d eval passages (%s)" %
          (len(chapters), n_verses, len(train), len(eval_idx), a.out_dir))


if __name__ == "__main__":
    main()
