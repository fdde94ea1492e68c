#!/usr/bin/env python3
"""Task (1) of the experiments (issue 15): King James Bible language modelling, held out by BOOK.

    kjv_data.py BIBLE_TEXT OUT_DIR [--eval-books Ruth,Ecclesiastes,Micah,Philippians]
                [--chunk-chars 360]

BIBLE_TEXT is the output of `bible -l10000 Gen1:1-Rev22:21` (Debian's bible-kjv; scripts/setup.sh
installs it): a "Book N" heading per chapter, then one "  V text" line per verse. Consecutive
verses of a chapter are joined into passages of at most --chunk-chars characters, as the
quickstart does (scripts/quickstart/bible_data.py). Unlike the quickstart's split, whole books are
held out: every passage of the --eval-books goes to OUT_DIR/eval.jsonl and none of their text is
in OUT_DIR/train.jsonl, so the eval loss measures how the adaptation carries over to unseen text
of the domain (narrative, wisdom, prophecy and epistle by default), not memorisation of
neighbouring verses. Lines are {"text": ...}; train.jsonl is shuffled with a fixed seed.
OUT_DIR/split.json records the books and counts. Deterministic; standard library only.
"""
import argparse
import json
import os
import random
import re


def read_books(path):
    """[(book, [chapter verses...]), ...] in the file's order."""
    books = []
    with open(path, encoding="utf-8", errors="replace") as fh:
        verses = None
        for line in fh:
            line = line.rstrip("\n")
            m = re.match(r"^\s+(\d+) (.*)$", line)
            if m and verses is not None:
                verses.append(m.group(2).strip())
            elif line.strip() and not line.startswith(" "):
                h = re.match(r"^(.*\S)\s+(\d+)$", line.strip())  # "1 Samuel 3", "Song of Solomon 2"
                if not h:
                    raise SystemExit("error: %s: unexpected heading %r" % (path, line))
                book = h.group(1)
                if not books or books[-1][0] != book:
                    books.append((book, []))
                verses = []
                books[-1][1].append(verses)
    return books


def passages_of(chapters, chunk_chars):
    out = []
    for verses in chapters:
        cur = ""
        for v in verses:
            if cur and len(cur) + 1 + len(v) > chunk_chars:
                out.append(cur)
                cur = ""
            cur = (cur + " " + v) if cur else v
        if cur:
            out.append(cur)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("bible_text")
    ap.add_argument("out_dir")
    ap.add_argument("--eval-books", default="Ruth,Ecclesiastes,Micah,Philippians")
    ap.add_argument("--chunk-chars", type=int, default=360)
    a = ap.parse_args()

    books = read_books(a.bible_text)
    names = [b for b, _ in books]
    n_verses = sum(len(c) for _, chs in books for c in chs)
    if len(books) != 66 or n_verses < 31000:
        raise SystemExit("error: %s: %d books, %d verses (expected the whole Bible: 66 books, 31102 verses)"
                         % (a.bible_text, len(books), n_verses))
    eval_books = [b.strip() for b in a.eval_books.split(",") if b.strip()]
    for b in eval_books:
        if b not in names:
            raise SystemExit("error: --eval-books: no book %r (books: %s)" % (b, ", ".join(names)))

    train, held = [], []
    for book, chapters in books:
        ps = passages_of(chapters, a.chunk_chars)
        (held if book in eval_books else train).extend(ps)
    random.Random(7).shuffle(train)
    os.makedirs(a.out_dir, exist_ok=True)
    for name, rows in (("train.jsonl", train), ("eval.jsonl", held)):
        with open(os.path.join(a.out_dir, name), "w", encoding="utf-8") as fh:
            for p in rows:
                fh.write(json.dumps({"text": p}) + "\n")
    split = {"eval_books": eval_books, "train_books": len(books) - len(eval_books),
             "train_passages": len(train), "eval_passages": len(held), "chunk_chars": a.chunk_chars,
             "train_chars": sum(len(p) for p in train), "eval_chars": sum(len(p) for p in held)}
    with open(os.path.join(a.out_dir, "split.json"), "w") as fh:
        json.dump(split, fh, indent=1)
        fh.write("\n")
    print("kjv data: %d books, %d verses -> %d training passages (%d books), %d eval passages (held-out books: %s) in %s"
          % (len(books), n_verses, len(train), split["train_books"], len(held), ", ".join(eval_books), a.out_dir))


if __name__ == "__main__":
    main()
